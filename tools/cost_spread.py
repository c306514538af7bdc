"""The variance of the article's costs across sibling parents in the trained article models (notebook 02's SPREAD).

SPREAD floors that variance at 1e-2 (a max, so it changes nothing where the variance is above it). This script measures,
for every trained article model under results/training, the smallest variance (and the 0.1% quantile and the median)
that each routing layer meets on the first 300 test images, routing with the literal code, and writes
results/cost_spread.json, which notebook 02 prints.

    python tools/cost_spread.py
"""
import json, pathlib, sys
import torch

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import emcaps_nb.routing as routing
from emcaps_nb.data import get_dataset
from emcaps_nb.mstep import m_step
from emcaps_nb.training import load_model

IMAGES = 300
_layer, _seen = [None], {}


def _recording_m_step(rr, votes, a_in, beta_v, beta_a, lam, cost='article', cost_scale=1.0):
    "m_step, noting the variance across parents of the article's cost_j = sum_h (beta_v + ln sigma_j^h) sum_i r'_ij."
    mean, stdv, a_out = m_step(rr, votes, a_in, beta_v, beta_a, lam, cost, cost_scale)
    if cost == 'article':
        with torch.no_grad():
            cost_j = ((beta_v[..., None] + stdv.log()) * (rr * a_in[..., None]).sum(-2)[..., None]).sum(-1)
            _seen.setdefault(_layer[0], []).append(((cost_j - cost_j.mean(-1, keepdim=True)) ** 2).mean(-1).flatten().double())
    return mean, stdv, a_out


def measure(path) -> dict | None:
    net, cfg = load_model(path)
    if cfg.variant != 'article' or not hasattr(net, 'class_caps'): return None
    for name, m in net.named_modules():
        if hasattr(m, 'routing'):
            m.routing = 'literal'
            m.register_forward_pre_hook(lambda mod, inp, name=name: _layer.__setitem__(0, name))
    ds = get_dataset(cfg.dataset, False, cfg.root, False, False)
    x = torch.stack([ds[i][0] for i in range(min(IMAGES, len(ds)))])
    _seen.clear()
    with torch.no_grad(): net(x)
    layers = {}
    for name, vs in _seen.items():
        v = torch.cat(vs)
        layers[name] = {'problems': v.numel(), 'min': v.min().item(), 'q0.001': v.quantile(1e-3).item(), 'median': v.median().item()}
    return {'dataset': cfg.dataset, 'model': cfg.model, 'iterations': cfg.iterations, 'images': len(x), 'layers': layers}


def main():
    torch.set_num_threads(1)
    routing.m_step = _recording_m_step
    out = {}
    for path in sorted((ROOT / 'results' / 'training').glob('*/last.pt')):
        r = measure(path)
        if r: out[str(path.relative_to(ROOT))] = r; print(path.parent.name, r, flush=True)
    res = {'what': 'variance of the article cost across sibling parents, literal routing, float32, first test images',
           'spread_floor': 1e-2, 'models': out}
    (ROOT / 'results' / 'cost_spread.json').write_text(json.dumps(res, indent=1) + '\n')


if __name__ == '__main__': main()
