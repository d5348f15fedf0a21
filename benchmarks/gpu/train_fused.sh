#!/usr/bin/env bash
# Whole-model training throughput on one GPU: DeepSpeed's bf16 optimizer (the configs as they
# are, ZeRO 1) against optimizer.implementation = fused (ZeRO 0), compiled blocks, micro-batch 8.
#   benchmarks/gpu/train_fused.sh OUT_DIR [CONFIG...]
set -uo pipefail
out=$1; shift; mkdir -p "$out"
configs=("$@"); [ ${#configs[@]} -gt 0 ] || configs=(configs/1p3b_dense.json configs/1p3b_lowrank.json)
python3 benchmarks/bench_train.py --configs "${configs[@]}" --modes compile --micro-batch-size 8 \
    --steps ${STEPS:-25} --warmup 10 \
    --variant 'fused:optimizer.implementation="fused";parallel.zero_stage=0' \
    --out "$out/bench_train_fused.json" 2>&1 | grep -v "^\[20\|Warning\|warn("
