#!/usr/bin/env bash
# 1.3B lowrank on one node of 2 GPUs: 1 GPU, then data / tensor / pipeline parallel 2,
# each a 50-step launcher run with the loss logged (issues 4 and 7), then the per-group
# collective bytes and step time of tensor-parallel lowrank against tensor-parallel dense.
#   benchmarks/gpu/layouts_2gpu.sh OUT_DIR
set -uo pipefail
out=$1; mkdir -p "$out"
common=(--micro-batch-size 8 --steps 50 --warmup 10 --modes eager --keep-logs "$out/logs")
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 1 \
    "${common[@]}" --out "$out/train_1gpu.json" 2>&1 | grep -v "^\[20" | tail -3
python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 2 "${common[@]}" \
    --variant 'tp2:parallel.tensor=2' --variant 'pp2:parallel.pipeline=2' \
    --out "$out/train_2gpu.json" 2>&1 | grep -v "^\[20" | tail -6
for kind in lowrank dense; do
  python3 benchmarks/bench_scaling.py --config configs/1p3b_$kind.json --sweep 2x1x1 --steps 10 --warmup 5 \
      --override training.micro_batch_size=8 --override training.global_batch_size=8 \
      --out "$out/tp2_$kind.json" 2>&1 | grep "^t2"
done
