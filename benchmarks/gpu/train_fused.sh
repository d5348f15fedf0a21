#!/usr/bin/env bash
# The optimizer step alone (benchmarks/bench_optimizer.py), then whole-model training throughput
# on one GPU: DeepSpeed's bf16 optimizer (the configs as they are, ZeRO 1) against
# optimizer.implementation = fused (ZeRO 0), compiled blocks, micro-batch 8.
#   benchmarks/gpu/train_fused.sh OUT_DIR [CONFIG...]
set -uo pipefail
out=$1; shift; mkdir -p "$out"
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(configs/1p3b_dense.json configs/1p3b_lowrank.json)
# the optimizer machinery alone (one 16-token micro-batch per step): DeepSpeed ZeRO 1, fused ZeRO 0 / 1
python3 benchmarks/bench_optimizer.py --config configs/1p3b_lowrank.json --out "$out/bench_optimizer.json" \
    2>&1 | grep -v "^\[20\|Warning\|warn(" | tail -5
python3 benchmarks/bench_train.py --configs "${configs[@]}" --modes compile --micro-batch-size 8 \
    --steps ${STEPS:-25} --warmup 10 \
    --variant 'fused:optimizer.implementation="fused";parallel.zero_stage=0' \
    --out "$out/bench_train_fused.json" 2>&1 | grep -v "^\[20\|Warning\|warn("
