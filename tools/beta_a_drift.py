"""Issue 16, the `paper-ba` trial: how far each routing layer's beta_a moved in training, against how far it could move
at emcaps train's learning rate. For each finished paper-ba run of the ablation (its last.pt under runs/ablation), the
start is rebuilt as `emcaps train` builds it (the same config and seed: calibrate_activations, notebook 05) and one
step taken at beta_a_lr = 1 (which moves beta_a by at most lr = 0.003); the drift is |final - start| per capsule type.
The bound for the paper variant at beta_a_lr = 1 is Adam's: at most lr_t per step, summed over the run's steps.
Writes results/ablation/beta_a_drift.json and prints one line per layer.

    OMP_NUM_THREADS=1 python tools/beta_a_drift.py
"""
import json, math, pathlib, statistics, sys

import torch

from emcaps_nb.training import TrainConfig, hardware, load_checkpoint, train

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / 'results' / 'ablation' / 'beta_a_drift.json'


def main():
    torch.set_num_threads(1)
    runs = []
    for ckpt in sorted((ROOT / 'runs' / 'ablation').glob('mnist-sample-paper-ba-it*-s*/last.pt')):
        if not (ROOT / 'results' / 'ablation' / ckpt.parent.name / 'summary.json').exists(): continue   # finished runs only
        state = load_checkpoint(ckpt)
        saved = {**state['config'], 'root': str(ROOT / 'data')}
        cfg = TrainConfig.from_dict(saved)
        start = train(TrainConfig.from_dict({**saved, 'epochs': 1, 'beta_a_lr': 1.0}), out=None, progress=False, log=False,
                      stop_after=1).model.state_dict()
        steps_per_epoch = math.ceil(state['history'][0]['train_images'] / cfg.batch_size)
        bound = sum(cfg.lr * cfg.lr_decay ** e * steps_per_epoch for e in range(cfg.epochs))   # Adam: <= lr per step
        layers = {}
        for k, v in state['model'].items():
            if not k.endswith('.beta_a'): continue
            drift = (v.double() - start[k].double()).abs().tolist()
            row = layers[k.removesuffix('.beta_a')] = {'median_start': round(statistics.median(start[k].tolist()), 1),
                                                       'median_drift': round(statistics.median(drift), 1), 'max_drift': round(max(drift), 1)}
            print(f"{ckpt.parent.name} {k}: start median {row['median_start']}, drift median {row['median_drift']}, max {row['max_drift']}", flush=True)
        runs.append({'run': ckpt.parent.name, 'iterations': cfg.iterations, 'beta_a_lr': cfg.beta_a_lr, 'epochs': cfg.epochs,
                     'steps_per_epoch': steps_per_epoch, 'bound_at_beta_a_lr_1': round(bound, 2), 'layers': layers})
        print(f"{ckpt.parent.name}: at beta_a_lr 1, beta_a could have moved at most {bound:.2f} in {cfg.epochs} epochs", flush=True)
    if not runs: sys.exit('no finished paper-ba runs with their checkpoints under runs/ablation')
    OUT.write_text(json.dumps({'what': "beta_a of each routing layer of the paper-ba runs: start (as emcaps train calibrates it) "
                                       "and |final - start| per capsule type, in the cost's units (the logit moves by lambda times it)",
                               'hardware': hardware(torch.device('cpu')), 'runs': runs}, indent=1) + '\n')


if __name__ == '__main__': main()
