"""Class activations, loss and gradient norms of the `paper` variant at initialisation (after calibrate_activations), with
2 and 3 routing iterations: `OMP_NUM_THREADS=1 python tools/init_diagnostics.py` (about a minute). It measured why the
3-iteration paper runs of the ablation start slowly (issue 16's notes)."""
import torch
from emcaps_nb.training import build_model
from emcaps_nb.layers import calibrate_activations
from emcaps_nb.data import get_dataset
from emcaps_nb.loss import spread_loss
torch.set_num_threads(1)
ds = get_dataset('mnist-sample', True, 'data', False, False)
x = torch.stack([ds[k][0] for k in range(128)]); y = torch.tensor([ds[k][1] for k in range(128)])
for it in (2, 3):
    torch.manual_seed(0)
    net = build_model('small', 1, 10, it, 0.01, image_size=28, variant='paper', spatial_routing=None)
    calibrate_activations(net, x[:64])
    xt, yt = x[64:], y[64:]
    a = net(xt)[1]
    q = torch.quantile(a.detach().flatten(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    loss = spread_loss(a, yt, 0.2); loss.backward()
    g = {n: p.grad.norm().item() for n, p in net.named_parameters() if p.grad is not None}
    print(it, 'quantiles', q.numpy().round(3), 'saturated', ((a < 0.01) | (a > 0.99)).float().mean().item(), 'loss', loss.item())
    print('  grad norms', {k: f'{v:.2e}' for k, v in g.items() if 'W' in k or 'conv1.0.weight' in k})
