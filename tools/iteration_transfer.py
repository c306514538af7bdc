"""Issue 16: is a routing iteration count a property of the trained network? Each finished 2-iteration run of the
ablation (mnist-sample, `small`, seeds 0 and 1), evaluated on the 1,000 test images with 1, 2, 3 and 4 routing
iterations (`emcaps eval --iterations`), the weights unchanged. Writes results/ablation/iteration_transfer.json and
prints one line per run.

    OMP_NUM_THREADS=1 python tools/iteration_transfer.py
"""
import json, pathlib, sys, warnings

import torch

from emcaps_nb.training import IterationsWarning, eval_checkpoint, hardware

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / 'results' / 'ablation' / 'iteration_transfer.json'
VARIANTS = ('article', 'article-schedule', 'paper', 'paper-per-position')


def main():
    torch.set_num_threads(1)
    warnings.simplefilter('ignore', IterationsWarning)   # other counts than trained: the measurement
    runs = []
    for variant in VARIANTS:
        for seed in (0, 1):
            name = f'mnist-sample-{variant}-it2-s{seed}'
            ckpt = ROOT / 'runs' / 'ablation' / name / 'last.pt'
            if not (ROOT / 'results' / 'ablation' / name / 'summary.json').exists() or not ckpt.exists(): continue
            acc = {its: round(eval_checkpoint(str(ckpt), iterations=its, device='cpu', root=str(ROOT / 'data'))['accuracy'], 4)
                   for its in (1, 2, 3, 4)}
            runs.append({'run': name, 'variant': variant, 'seed': seed, 'trained_iterations': 2, 'test_acc_by_iterations': acc})
            print(name, acc, flush=True)
    if not runs: sys.exit('no finished 2-iteration runs with their checkpoints under runs/ablation')
    OUT.write_text(json.dumps({'what': 'test accuracy (mnist-sample, 1000 images) of networks trained with 2 routing '
                                       'iterations, evaluated with 1 to 4 iterations, weights unchanged',
                               'hardware': hardware(torch.device('cpu')), 'runs': runs}, indent=1) + '\n')


if __name__ == '__main__': main()
