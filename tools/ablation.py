"""The routing ablation of issue 16: variants x routing iterations x seeds, trained with `emcaps train`, resumable.

Each run trains in runs/ablation/NAME (checkpoint every epoch, so a killed run resumes with --resume) and, once
finished, its small files (config.json, metrics.jsonl, summary.json) are copied to results/ablation/NAME/. A run still
training is carried across machines by `--sync`, which also copies its checkpoint to results/in-progress/NAME/ (commit
it); when runs/ablation/NAME is gone, the run resumes from that copy. Runs are
taken in the priority order of GRID; `--worker k/n` takes every n-th run starting at k, so that n processes with one
thread each share a machine. `python -m emcaps_nb.results ablation` (notebook 08a) gathers results/ablation into
results/ablation/summary.json.

    OMP_NUM_THREADS=1 nohup python tools/ablation.py --worker 0/2 > runs/ablation-0.log 2>&1 &
    OMP_NUM_THREADS=1 nohup python tools/ablation.py --worker 1/2 > runs/ablation-1.log 2>&1 &
"""
import argparse, json, pathlib, shutil, subprocess, sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
VARIANTS = {  # name -> emcaps train options
    'article': ['--variant', 'article', '--inverse-temperature', '0.01'],
    'article-schedule': ['--variant', 'article', '--inverse-temperature', 'article'],
    'paper': ['--variant', 'paper'],
    'paper-per-position': ['--variant', 'paper', '--spatial-routing', 'off'],
    'paper-clip': ['--variant', 'paper', '--clip-grad-norm', '1'],  # a trial for 3 iterations' slow start (issue 16)
    'paper-warm': ['--variant', 'paper'],   # a trial: 3 iterations started from the finished 2-iteration run (WARM)
    'paper-warm-lr': ['--variant', 'paper', '--lr', '0.0003'],   # the same at a tenth of the learning rate
    'paper-lr': ['--variant', 'paper', '--lr', '0.001'],   # a trial: 3 iterations from scratch at a third of the learning rate
    'paper-floor': ['--variant', 'paper', '--var-floor', '5e-4'],   # a trial: the official code's variance floor (min_var)
    'paper-bv': ['--variant', 'paper', '--calibrate-beta-v'],   # a trial: beta_v calibrated at the start too (notebook 05)
    'paper-damp': ['--variant', 'paper', '--damping', '0.1'],   # a trial: the official code's damped mean (notebook 02)
    'paper-ba': ['--variant', 'paper', '--beta-a-lr', '5000'],   # a trial: beta_a learning as the official code's beta_a x 5000 (notebook 07)
    'paper-ba-official': ['--variant', 'paper', '--beta-a-lr', '5000', '--official-start'],   # and W, beta_v started as the official code's (notebook 07)
}
WARM = {'paper-warm': ('paper', 2, 10), 'paper-warm-lr': ('paper', 2, 10)}   # variant -> (variant, iterations of the run it starts from, epochs of its own)
EPOCHS = {'mnist-sample': 20, 'fashion-mnist': 6}


def run_name(dataset, variant, iterations, seed): return f'{dataset}-{variant}-it{iterations}-s{seed}'


# Fashion-MNIST (issue 16): the two best variants on mnist-sample, article (98.9% at 1 iteration, two seeds) and
# article-schedule (99.1% at 1 iteration), at their best iteration count and at 3 iterations, seed 0
FASHION = [('article', 1), ('article', 3), ('article-schedule', 1), ('article-schedule', 3)]


def grid() -> list:
    "mnist-sample runs in priority order (what answers 'do iterations help?' first), then the Fashion-MNIST runs."
    order = [('paper', 0), ('article', 0), ('paper', 1), ('paper-per-position', 0), ('article-schedule', 0),
             ('article', 1), ('paper-per-position', 1), ('article-schedule', 1)]
    return [('mnist-sample', v, it, s) for v, s in order for it in (1, 2, 3)] + [('fashion-mnist', v, it, 0) for v, it in FASHION]


def train(dataset, variant, iterations, seed):
    name = run_name(dataset, variant, iterations, seed)
    out, res = ROOT / 'runs' / 'ablation' / name, ROOT / 'results' / 'ablation' / name
    if (res / 'summary.json').exists(): return
    keep = ROOT / 'results' / 'in-progress' / name
    if not (out / 'last.pt').exists() and (keep / 'last.pt').exists():   # runs/ was lost: resume from the committed copy
        shutil.copytree(keep, out, dirs_exist_ok=True)
    epochs, warm = EPOCHS[dataset], []
    if variant in WARM:
        source, its, epochs = WARM[variant]
        warm = ['--init', f'runs/ablation/{run_name(dataset, source, its, seed)}/last.pt']   # relative: commands run in ROOT
    cmd = ['emcaps', 'train', '--dataset', dataset, '--config', 'small', '--epochs', str(epochs),
           '--iterations', str(iterations), '--seed', str(seed), *VARIANTS[variant], *warm,
           *(['--checkpoint-every', '300'] if dataset != 'mnist-sample' else []),   # long epochs: lose little when stopped
           '--out', str(out), '--resume', '--no-progress']
    print('+', ' '.join(cmd), flush=True)
    r = subprocess.run(cmd, cwd=ROOT)
    if r.returncode: print(f'{name}: exit status {r.returncode}', flush=True); return
    res.mkdir(parents=True, exist_ok=True)
    for f in ('config.json', 'metrics.jsonl', 'summary.json'):
        if (out / f).exists(): shutil.copy(out / f, res / f)
    shutil.rmtree(keep, ignore_errors=True)
    (res / 'run.json').write_text(json.dumps({'command': ' '.join(cmd[:-4] + ['--out', f'runs/ablation/{name}']),
                                              'threads': 1}, indent=1) + '\n')


def _epochs(folder): return len((folder / 'metrics.jsonl').read_text().splitlines()) if (folder / 'metrics.jsonl').exists() else 0


def sync():
    """Copy the small files of runs still training (config.json, metrics.jsonl; no summary.json) to results/ablation,
    and what resumes them (those, run.json, steps.jsonl, last.pt) to results/in-progress."""
    for out in sorted((ROOT / 'runs' / 'ablation').glob('*/config.json')):
        out, res = out.parent, ROOT / 'results' / 'ablation' / out.parent.name
        if (res / 'summary.json').exists() or not (out / 'metrics.jsonl').exists(): continue
        res.mkdir(parents=True, exist_ok=True)
        if _epochs(out) >= _epochs(res):   # a run restarted after its folder was lost keeps the longer record until it passes it
            for f in ('config.json', 'metrics.jsonl'): shutil.copy(out / f, res / f)
        keep = ROOT / 'results' / 'in-progress' / out.name
        keep.mkdir(parents=True, exist_ok=True)
        for f in ('config.json', 'metrics.jsonl', 'run.json', 'steps.jsonl', 'last.pt'):
            if (out / f).exists(): shutil.copy(out / f, keep / f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--worker', default='0/1', help='k/n: take every n-th run of the grid, starting at k')
    ap.add_argument('--extra', nargs='*', default=[], help='more runs, as dataset:variant:iterations:seed')
    ap.add_argument('--only-extra', action='store_true', help='run only the --extra runs, not the grid')
    ap.add_argument('--sync', action='store_true', help='only copy the files of runs still training to results/ablation')
    args = ap.parse_args()
    if args.sync: return sync()
    k, n = map(int, args.worker.split('/'))
    runs = ([] if args.only_extra else grid()) + [(d, v, int(i), int(s)) for d, v, i, s in (e.split(':') for e in args.extra)]
    for run in runs[k::n]: train(*run)


if __name__ == '__main__': main()
