"""The Triton backend's property tests (tests/triton_properties.py), in a process where Triton's interpreter runs the
kernels on CPU tensors (no GPU here); on a machine with CUDA the same file runs the compiled kernels."""
import os, pathlib, subprocess, sys

import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_triton_backend_properties():
    env = dict(os.environ)
    if not torch.cuda.is_available(): env['TRITON_INTERPRET'] = '1'
    r = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', str(ROOT / 'tests' / 'triton_properties.py')],
                       capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
