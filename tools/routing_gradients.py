"""Issue 16, why 3 routing iterations train worse than 2: the gradient of the `small` network's weights at the start of
training, with 1, 2 and 3 routing iterations, for the article's and the paper's variant (and the paper's with the official
code's variance floor, var_floor 5e-4: `paper-floor`; with beta_v calibrated too, calibrate_activations(beta_v=True):
`paper-bv`; with the official code's damped mean, damping 0.1: `paper-damp`; and with W and beta_v started as the official
code's, official_start: `paper-official`).

For each variant, number of iterations and seed: the network as `emcaps train` starts it (build_model and start_network
with the variant's TrainConfig fields, VARIANTS below; the paper variant's calibration on 256 training images), one batch
of 64 mnist-sample training images, the spread loss at the first epoch's margin (0.2), the share of class activations
saturated (below 0.01 or above 0.99), and the norm of the loss's gradient with respect to each layer's W and beta_v.
Writes results/ablation/gradient_growth.json and prints one line per run.

With --trained: for the finished paper and paper-floor runs in runs/ablation (1, 2 and 3 iterations, seed 0), the share of
each layer's parents whose variance has collapsed onto a single vote after the last routing iteration (mean ln sigma^2 over
the 16 pose entries within a factor 10 of the run's variance floor: EPS, or its var_floor), on 64 test images, with the
literal routing. Writes
results/ablation/collapse.json.

    OMP_NUM_THREADS=1 python tools/routing_gradients.py [VARIANT ...]   (the named variants again, the others kept from the file)
    OMP_NUM_THREADS=1 python tools/routing_gradients.py --trained
"""
import json, pathlib, platform, statistics, sys

import torch

from emcaps_nb.data import get_dataset
from emcaps_nb.training import TrainConfig, build_model, hardware, load_model, model_loss, start_network
import emcaps_nb.routing as routing
from emcaps_nb.mstep import EPS

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / 'results' / 'ablation' / 'gradient_growth.json'
VARIANTS = {   # each variant's TrainConfig fields (the routing's iterations and lambda 0.01 are added per run)
    'article': dict(variant='article'),
    'paper': dict(variant='paper'),
    'paper-floor': dict(variant='paper', var_floor=5e-4),
    'paper-bv': dict(variant='paper', calibrate_beta_v=True),
    'paper-damp': dict(variant='paper', damping=0.1),
    'paper-official': dict(variant='paper', official_start=True),
}


def main(only=()):
    if unknown := set(only) - set(VARIANTS): sys.exit(f'unknown variants {sorted(unknown)}; choose from {tuple(VARIANTS)}')
    torch.set_num_threads(1)
    ds = get_dataset('mnist-sample', True, str(ROOT / 'data'), False, False)
    calib = torch.stack([ds[k][0] for k in range(256)])
    x, y = calib[:64], torch.tensor([ds[k][1] for k in range(64)])
    kept = json.loads(OUT.read_text())['runs'] if only and OUT.exists() else []
    rows = [r for r in kept if r['variant'] not in only]
    for variant in (only or VARIANTS):
        for its in (1, 2, 3):
            for seed in (0, 1, 2):
                cfg = TrainConfig(model='small', iterations=its, inverse_temperature=0.01, **VARIANTS[variant])
                torch.manual_seed(seed)
                net = build_model(cfg.model, 1, 10, cfg.iterations, cfg.inverse_temperature, image_size=28, variant=cfg.variant,
                                  var_floor=cfg.var_floor, damping=cfg.damping)
                start_network(net, cfg, calib)
                act = net(x)[1]
                saturated = ((act < 0.01) | (act > 0.99)).double().mean().item()
                loss = model_loss('small', act.float(), y, 0.2)
                net.zero_grad(); loss.backward()
                norms = {n: p.grad.norm().item() for n, p in net.named_parameters()
                         if p.grad is not None and n.split('.')[-1] in ('W', 'beta_v')}
                rows.append({'variant': variant, 'iterations': its, 'seed': seed, 'loss': loss.item(), 'saturated': saturated, 'grad_norm': norms})
                print(variant, its, seed, ' '.join(f'{k} {v:.2e}' for k, v in norms.items()), flush=True)
    summary = {}
    for variant in [v for v in VARIANTS if any(r['variant'] == v for r in rows)]:
        for its in (1, 2, 3):
            rs = [r for r in rows if (r['variant'], r['iterations']) == (variant, its)]
            summary[f'{variant}-it{its}'] = {k: statistics.median(r['grad_norm'][k] for r in rs) for k in rs[0]['grad_norm']}
            summary[f'{variant}-it{its}'].update(loss=statistics.median(r['loss'] for r in rs), saturated=statistics.median(r['saturated'] for r in rs))
    OUT.write_text(json.dumps({'what': __doc__.split('\n\n')[0], 'batch': 64, 'margin': 0.2, 'dataset': 'mnist-sample', 'config': 'small',
                               'hardware': hardware(torch.device('cpu')), 'torch': torch.__version__, 'python': platform.python_version(),
                               'median_over_seeds': summary, 'runs': rows}, indent=1) + '\n')
    print('wrote', OUT)


def collapse():
    torch.set_num_threads(1)
    ds = get_dataset('mnist-sample', False, str(ROOT / 'data'), False, False)
    x = torch.stack([ds[k][0] for k in range(64)])
    seen, m_step = [], routing.m_step
    def spy(rr, votes, a_in, *args, **kw):   # records each M-step's sigma and activation
        out = m_step(rr, votes, a_in, *args, **kw); seen.append((votes.shape[-3], out[1].detach(), out[2].detach())); return out
    routing.m_step = spy
    rows = []
    runs = [(f'mnist-sample-{v}-it{its}-s0', its) for v in ('paper', 'paper-floor') for its in (1, 2, 3)]
    for name, its in runs:
        if not (ROOT / 'results' / 'ablation' / name / 'summary.json').exists(): continue   # finished runs only
        net, cfg = load_model(ROOT / 'runs' / 'ablation' / name / 'last.pt')
        floor = cfg.var_floor or EPS[torch.float32]   # the run's own variance floor
        for m in net.modules():
            if hasattr(m, 'routing'): m.routing = 'literal'
        seen.clear()
        with torch.no_grad(): net(x)
        layers = []
        for k in range(len(seen) // its):
            I, stdv, a = seen[(k + 1) * its - 1]          # the layer's last M-step
            lv = torch.log(stdv.double() ** 2).mean(-1)   # mean ln sigma^2 per parent
            col = (lv < torch.log(torch.tensor(10 * floor, dtype=torch.float64))).double()
            layers.append({'inputs': I, 'collapsed': col.mean().item(),
                           'collapsed_activation_weighted': ((col * a.double()).sum() / a.double().sum()).item(),
                           'mean_ln_var': lv.mean().item(), 'mean_activation': a.double().mean().item()})
        rows.append({'run': name, 'iterations': its, 'var_floor': floor, 'layers': layers})
        print(name, json.dumps(layers), flush=True)
    out = OUT.with_name('collapse.json')
    out.write_text(json.dumps({'what': 'share of parents collapsed onto one vote (mean ln sigma^2 within 10x of the run\'s variance floor: EPS, or var_floor), last iteration, 64 test images',
                               'eps': EPS[torch.float32], 'hardware': hardware(torch.device('cpu')), 'runs': rows}, indent=1) + '\n')
    print('wrote', out)


if __name__ == '__main__': collapse() if '--trained' in sys.argv[1:] else main(tuple(sys.argv[1:]))
