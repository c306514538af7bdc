"""The compiled CPU kernel as a process sees it: built once into its cache, shared by processes that start
together, rebuilt when damaged, and replaced by the PyTorch routing (with one warning) where it cannot be built."""
import json, os, subprocess, sys

import pytest

# A small routing in a fresh process: which backend 'auto' picked, warnings, and the largest difference from
# the literal routing (outputs and gradients).
PROBE = r'''
import json, warnings
import torch
from emcaps_nb.fast_routing import cpu_kernel, em_routing_fast, vote_and_route, _backend
from emcaps_nb.routing import em_routing
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    picked = _backend('auto', torch.device('cpu'))
    cpu_kernel(); cpu_kernel()
g = torch.Generator().manual_seed(0)
args = [torch.randn(3, 9, 4, 16, generator=g, dtype=torch.float64), torch.rand(3, 9, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64)]
outs = []
for f in (em_routing_fast, em_routing):
    xs = [t.clone().requires_grad_() for t in args]
    pose, act = f(*xs)
    (pose.square().sum() + act.sum()).backward()
    outs.append([pose, act] + [x.grad for x in xs])
diff = max(float((a - b).abs().max()) for a, b in zip(*outs))
try:
    em_routing_fast(*args, backend='cpp'); cpp_error = None
except RuntimeError as e: cpp_error = str(e)
print(json.dumps({'backend': picked, 'warnings': [str(w.message) for w in caught], 'diff': diff, 'cpp_error': cpp_error}))
'''


def _probe(env, cwd):
    r = subprocess.run([sys.executable, '-c', PROBE], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def env(tmp_path):
    e = {k: v for k, v in os.environ.items() if k not in ('CXX', 'EMCAPS_NB_KERNEL')}
    e['EMCAPS_NB_CACHE'] = str(tmp_path / 'cache')
    return e


def test_built_once_then_loaded(env, tmp_path):
    first = _probe(env, tmp_path)
    assert first == {'backend': 'cpp', 'warnings': [], 'diff': first['diff'], 'cpp_error': None}
    assert first['diff'] < 1e-10
    built = sorted((tmp_path / 'cache').iterdir())
    assert len(built) == 1 and built[0].suffix == '.so', built
    stamp = built[0].stat().st_mtime_ns
    assert _probe(env, tmp_path)['backend'] == 'cpp'
    assert sorted((tmp_path / 'cache').iterdir()) == built and built[0].stat().st_mtime_ns == stamp   # loaded, not rebuilt


def test_processes_that_start_together_share_one_build(env, tmp_path):
    procs = [subprocess.Popen([sys.executable, '-c', PROBE], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, err
        got = json.loads(out.strip().splitlines()[-1])
        assert got['backend'] == 'cpp' and got['diff'] < 1e-10 and not got['warnings']
    assert [f.suffix for f in (tmp_path / 'cache').iterdir()] == ['.so']   # no temporary file left behind


def test_a_damaged_library_is_rebuilt(env, tmp_path):
    _probe(env, tmp_path)
    (lib,) = (tmp_path / 'cache').iterdir()
    lib.write_bytes(b'not a shared library')
    got = _probe(env, tmp_path)
    assert got['backend'] == 'cpp' and got['diff'] < 1e-10 and not got['warnings']
    assert lib.read_bytes()[:4] == b'\x7fELF'


def test_without_a_compiler_routing_falls_back_with_one_warning(env, tmp_path):
    env['CXX'] = str(tmp_path / 'no-such-compiler')
    got = _probe(env, tmp_path)
    assert got['backend'] == 'chunked' and got['diff'] < 1e-10
    assert len(got['warnings']) == 1 and 'falls back to PyTorch' in got['warnings'][0], got['warnings']
    assert 'no-such-compiler' in got['warnings'][0]
    assert "backend='cpp' needs tensors on the CPU and the compiled kernel" in got['cpp_error']
    assert not (tmp_path / 'cache').exists() or not any((tmp_path / 'cache').iterdir())


def test_switched_off_by_environment(env, tmp_path):
    env['EMCAPS_NB_KERNEL'] = '0'
    got = _probe(env, tmp_path)
    assert got == {'backend': 'chunked', 'warnings': [], 'diff': got['diff'], 'cpp_error': got['cpp_error']}
    assert got['diff'] < 1e-10 and got['cpp_error']


def test_extra_flags_build_their_own_library(env, tmp_path):
    "EMCAPS_NB_CXXFLAGS adds flags (a debug build here): a library of its own in the cache, the same results."
    _probe(env, tmp_path)
    env['EMCAPS_NB_CXXFLAGS'] = '-g -O1 -DEMCAPS_DEBUG_BUILD'
    got = _probe(env, tmp_path)
    assert got['backend'] == 'cpp' and got['diff'] < 1e-10 and not got['warnings']
    assert len([f for f in (tmp_path / 'cache').iterdir() if f.suffix == '.so']) == 2


def test_a_compiler_error_is_shown_in_full(env, tmp_path):
    "A flag the compiler rejects: the warning carries the command and the compiler's whole message."
    env['EMCAPS_NB_CXXFLAGS'] = '-fno-such-option-for-emcaps'
    got = _probe(env, tmp_path)
    assert got['backend'] == 'chunked' and len(got['warnings']) == 1
    msg = got['warnings'][0]
    assert 'em_cpu.cpp' in msg and 'exited with 1' in msg and '-fno-such-option-for-emcaps' in msg.split('exited with')[-1], msg


def test_the_wheel_ships_the_kernel_sources(tmp_path):
    "The C++ sources are package data: a wheel built from the repository holds every one of them."
    import pathlib, zipfile
    from emcaps_nb.fast_routing import KERNEL_FILES
    root = pathlib.Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '-q', '-w', str(tmp_path), str(root)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob('*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f'emcaps_nb/csrc/{f}' for f in KERNEL_FILES} <= names, sorted(n for n in names if 'csrc' in n)
