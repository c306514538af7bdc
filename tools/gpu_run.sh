#!/usr/bin/env bash
# One prepared GPU session: equality checks of the fast routing on CUDA (chunked and Triton), the routing benchmark, and two
# Fashion-MNIST trainings (capsule `paper` and `small`, run side by side for a fixed time), each stopped run
# then evaluated on the whole test set. Everything lands in $OUT (default: gpu-out/):
#   check.jsonl, bench.jsonl, train-*.log and gpu.tar.gz (the run folders).
# Usage, on a machine with a CUDA GPU and this package importable: OUT=gpu-out TRAIN_MIN=2 bash tools/gpu_run.sh
# STAGES picks what runs (default all: "check bench train"), so that one device call of at most 10 minutes can run
# "check bench" (about 6 minutes) and a second one "train" (about 3), with time left to rerun one after a fix.
# Without network, carry wheels in .whl/ (fastcore) and the Fashion-MNIST IDX files in .gpudata/fashion-mnist/.
set -u
OUT=${OUT:-gpu-out}; TRAIN_MIN=${TRAIN_MIN:-2}; RUNS=${RUNS:-/tmp/gpu-runs}; STAGES=${STAGES:-"check bench train"}
stage() { case " $STAGES " in *" $1 "*) return 0;; *) return 1;; esac; }
mkdir -p "$OUT" "$RUNS"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else export PYTHONPATH=$PWD; fi
if [ -d .gpudata/fashion-mnist ] && [ ! -d /usr/share/datasets/fashion-mnist ]; then
  mkdir -p /usr/share/datasets && cp -r .gpudata/fashion-mnist /usr/share/datasets/; fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$RUNS/gpu.txt"
python3 -c 'import torch, sys; print("torch", torch.__version__, "python", sys.version.split()[0])' | tee -a "$RUNS/gpu.txt"
if stage check; then
  t0=$SECONDS
  timeout 150 python3 tools/cuda_check.py > "$OUT/check.jsonl" 2>&1; echo "check rc=$? $((SECONDS - t0)) s"
  grep -c '"ok": true' "$OUT/check.jsonl"; grep '"ok": false' "$OUT/check.jsonl"; grep chunk_sweep "$OUT/check.jsonl"
fi
if stage bench; then   # every case with literal, chunked, compiled (torch.compile) and triton (notebook 04b), then batch 64
  t0=$SECONDS
  timeout 200 python3 -m emcaps_nb.bench --device cuda --repeats 5 > "$OUT/bench.jsonl" 2>&1; echo "bench rc=$? $((SECONDS - t0)) s"
  t0=$SECONDS
  timeout 80 python3 -m emcaps_nb.bench --device cuda --repeats 5 --case train_step --batch 64 --impl chunked --impl compiled --impl triton \
    >> "$OUT/bench.jsonl" 2>&1; echo "bench b64 rc=$? $((SECONDS - t0)) s"
  cat "$OUT/bench.jsonl"
fi
stage train || exit 0
t0=$SECONDS
for m in paper small; do   # the paper-sized network routes with the Triton kernels of notebook 04b
  routing=$([ $m = paper ] && echo triton || echo auto)
  # 2 iterations at lambda 0.01, the routing of the earlier H100 runs (results/training/*-h100), not today's default (1, lambda 1)
  timeout $(python3 -c "print(int($TRAIN_MIN * 60 + 45))") python3 -m emcaps_nb.cli train --dataset fashion-mnist --model $m --routing $routing \
    --iterations 2 --inverse-temperature 0.01 --epochs 12 --workers 5 --time-limit $TRAIN_MIN --checkpoint-every 200 --no-progress \
    --out "$RUNS/fashion-mnist-$m" > "$OUT/train-$m.log" 2>&1 &
done
wait; echo "train $((SECONDS - t0)) s"
for m in paper small; do   # the stopped model on the whole test set, with 1, 2 and 3 routing iterations
  ( for it in 1 2 3; do
      timeout 40 python3 -m emcaps_nb.cli eval --checkpoint "$RUNS/fashion-mnist-$m/last.pt" --iterations $it --json-out \
        >> "$RUNS/fashion-mnist-$m/eval.jsonl" 2>> "$OUT/train-$m.log"
    done ) &
done
wait
tail -n 3 "$OUT"/train-*.log; cut -c1-120 "$RUNS"/*/eval.jsonl
tar czf "$OUT/gpu.tar.gz" -C "$RUNS" . && ls -la "$OUT"
