#!/usr/bin/env bash
# Whole-model training throughput on one GPU, compiled blocks, micro-batch 8: the config as it
# is ('base': optimizer.implementation 'auto' = fused, ZeRO 1 as the 1.3B configs set it)
# against DeepSpeed's bf16 optimizer (ZeRO 1) and fused with ZeRO 0.
# One config per call keeps a call near 5 minutes (three launcher runs with compilation).
#   benchmarks/gpu/train_fused.sh OUT_DIR [CONFIG]
# The optimizer machinery alone: python3 benchmarks/bench_optimizer.py --config CONFIG --out OUT/opt.json
set -uo pipefail
out=$1; config=${2:-configs/1p3b_lowrank.json}; mkdir -p "$out"
python3 benchmarks/bench_train.py --configs "$config" --modes compile --micro-batch-size 8 \
    --steps ${STEPS:-25} --warmup 10 \
    --variant 'deepspeed:optimizer.implementation="deepspeed"' \
    --variant 'fused0:optimizer.implementation="fused";parallel.zero_stage=0' \
    --out "$out/bench_train_fused_$(basename "$config" .json).json" 2>&1 | grep -v "^\[20\|Warning\|warn("
