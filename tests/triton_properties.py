"""Property tests of `em_routing_fast(backend='triton')` (notebook 04b) in Triton's interpreter: the examples of
test_properties.py (random shapes, dtypes and value ranges, degenerate inputs included), each with finite outputs and
gradients under the same bounds, and in float64 the literal routing's answer. Not collected by pytest on its own:
test_triton.py runs it in a process of its own, because the interpreter is chosen when triton is first imported.
"""
import os, pathlib, sys

import torch
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from test_properties import _finite, _grads, problems   # noqa: E402

from emcaps_nb import em_routing, em_routing_fast   # noqa: E402

TRITON = settings(derandomize=True, deadline=None, max_examples=60, suppress_health_check=list(HealthCheck))


def test_interpreter_is_on():
    assert os.environ.get('TRITON_INTERPRET') == '1' or torch.cuda.is_available()


@TRITON
@given(problems())
def test_em_routing_triton(p):
    (votes, a, bv, ba), kw, bound = p
    pose, act = em_routing_fast(votes, a, bv, ba, backend='triton', **kw)
    assert pose.dtype == votes.dtype and ((act >= 0) & (act <= 1)).all()
    _finite(pose, act, *_grads((pose, act), (votes, a, bv, ba)), bound=bound)
    ref = em_routing(*(t.detach() for t in (votes, a, bv, ba)), **kw)
    if votes.dtype == torch.float64 and (kw['cost'] == 'paper' or votes.shape[-3] > 1):   # one input, article: ill-conditioned
        assert torch.allclose(pose.detach(), ref[0], rtol=1e-6, atol=1e-6 * (1 + ref[0].abs().max().item()))
        assert torch.allclose(act.detach(), ref[1], rtol=1e-6, atol=1e-6)
