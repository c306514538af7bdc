"""Checks of the fast EM routing on a CUDA device, one JSON object per line.

Run on a machine with a GPU: `python tools/cuda_check.py`. It checks that `em_routing_fast` equals the literal
`em_routing` on the GPU (outputs and gradients, float64 and float32, degenerate inputs included), that the GPU
agrees with the CPU, that a whole `CapsNet` gives the same scores with both paths and trains under bfloat16
autocast, and times the fast path for several chunk sizes (the `chunk_mb` argument) to show what chunking costs there.
The GPU backends of `em_routing_fast` are checked and timed: `chunked`, `compiled` (it under torch.compile; checked on
fewer cases, each shape and dtype costing a compilation) and the Triton kernels of notebook 04b.
"""
import functools, json, sys, time

import torch

from emcaps_nb.fast_routing import em_routing_fast
from emcaps_nb.layers import CapsNet
from emcaps_nb.loss import spread_loss
from emcaps_nb.routing import em_routing

def emit(**row): print(json.dumps(row), flush=True)

def rel_err(a, b): return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()

def inputs(shape, dtype, device, kind='random', seed=0):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(*shape, generator=g, dtype=dtype)
    a = torch.rand(*shape[:-2], generator=g, dtype=dtype)
    if kind == 'zero_activations': a = torch.zeros_like(a)
    if kind == 'identical_votes': v = v[..., :1, :, :].expand_as(v).contiguous()
    bv, ba = torch.randn(shape[-2], generator=g, dtype=dtype), torch.randn(shape[-2], generator=g, dtype=dtype)
    return [t.to(device).requires_grad_() for t in (v, a, bv, ba)]

def outputs_and_grads(route, ts, iterations):
    pose, act = route(*ts, iterations=iterations)
    w = torch.linspace(-1, 1, pose.numel(), dtype=pose.dtype, device=pose.device).view_as(pose)
    grads = torch.autograd.grad((pose * w).sum() + act.square().sum(), ts, allow_unused=True)
    return [pose.detach(), act.detach()] + [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, ts)]

def equality(device):
    names = ['pose', 'a_out', 'd_votes', 'd_a_in', 'd_beta_v', 'd_beta_a']
    for backend in ('chunked', 'compiled', 'triton'):
      fast_routing = functools.partial(em_routing_fast, backend=backend)
      few = backend == 'compiled'
      for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for shape in ((2, 2, 2, 18, 8, 16), (2, 2, 288, 32, 16)) if few else ((3, 5, 4, 16), (2, 2, 2, 18, 8, 16), (4, 512, 10, 16), (2, 2, 288, 32, 16)):
            for kind in ('random', 'identical_votes') if few else ('random', 'zero_activations', 'identical_votes'):
                for it in (3,) if few else (1, 3):
                    ts = inputs(shape, dtype, device, kind)
                    fast, lit = outputs_and_grads(fast_routing, ts, it), outputs_and_grads(em_routing, ts, it)
                    # identical votes: every variance sits at the floor EPS, and the gradients are of order 1/EPS and
                    # ill-conditioned (see the fast-routing notebook); there only the outputs are compared
                    n_cmp = 2 if kind == 'identical_votes' else len(names)
                    errs = {n: rel_err(f, l) for n, f, l in list(zip(names, fast, lit))[:n_cmp]}
                    finite = all(torch.isfinite(t).all().item() for t in fast)
                    emit(check='fast_vs_literal', backend=backend, device=device, dtype=str(dtype)[6:], shape=shape, inputs=kind,
                         iterations=it, max_rel_err=max(errs.values()), finite=finite,
                         ok=finite and max(errs.values()) <= tol)
    ts = inputs((2, 2, 2, 18, 8, 16), torch.float64, device)
    gpu = outputs_and_grads(em_routing_fast, ts, 3)
    cpu = outputs_and_grads(em_routing_fast, [t.detach().cpu().requires_grad_() for t in ts], 3)
    err = max(rel_err(g.cpu(), c) for g, c in zip(gpu, cpu))
    emit(check='gpu_vs_cpu', dtype='float64', max_rel_err=err, ok=err <= 1e-10)

def network(device):
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28, device=device)
    y = torch.arange(8, device=device) % 10
    nets = {r: CapsNet(routing=r, iterations=2).to(device) for r in ('literal', 'auto')}
    nets['auto'].load_state_dict(nets['literal'].state_dict())
    out = {r: n(x) for r, n in nets.items()}
    err = rel_err(out['auto'][1], out['literal'][1])
    emit(check='capsnet_fast_vs_literal', device=device, dtype='float32', max_rel_err=err, ok=err <= 1e-4)
    net = nets['auto']
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(5):
        with torch.autocast('cuda', dtype=torch.bfloat16):
            loss = spread_loss(net(x)[1].float(), y, 0.2)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    finite = all(torch.isfinite(p).all().item() for p in net.parameters())
    emit(check='capsnet_bf16_autocast_steps', losses=[round(l, 5) for l in losses], finite=finite,
         ok=finite and all(l == l for l in losses))

def chunk_sweep(device):
    for batch in (8, 32):
        ts = inputs((batch, 6, 6, 288, 32, 16), torch.float32, device)
        for backend, chunk_mb in [('chunked', mb) for mb in (16, 64, 256, 1024, 4096)] + [('compiled', 256), ('compiled', 4096), ('triton', None)]:
            def step():
                pose, act = em_routing_fast(*ts, iterations=2, chunk_mb=chunk_mb, backend=backend)
                torch.autograd.grad(pose.square().mean() + act.sum(), ts)
            step(); torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(5):
                t0 = time.perf_counter(); step(); torch.cuda.synchronize(); times.append(time.perf_counter() - t0)
            emit(check='chunk_sweep', backend=backend, case='convcaps1', batch=batch, chunk_mb=chunk_mb, iterations=2,
                 images_per_s=round(batch / sorted(times)[2], 1), peak_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1))

if __name__ == '__main__':
    if not torch.cuda.is_available(): sys.exit('tools/cuda_check.py needs a CUDA device; torch.cuda.is_available() is False')
    emit(check='device', name=torch.cuda.get_device_name(), torch=torch.__version__)
    equality('cuda'); network('cuda'); chunk_sweep('cuda')
