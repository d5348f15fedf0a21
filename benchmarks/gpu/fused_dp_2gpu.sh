#!/usr/bin/env bash
# Data-parallel weak scaling of optimizer.implementation = fused (ZeRO 0: bucketed all-reduce,
# ZeRO 1: bucketed reduce-scatter + all-gather, both overlapped with backward) against
# DeepSpeed's ZeRO-1 path: 1.3B lowrank, compiled blocks, micro-batch 8, one step per
# micro-batch, 1 GPU then 2 GPUs.
#   benchmarks/gpu/fused_dp_2gpu.sh OUT_DIR
set -uo pipefail
out=$1; mkdir -p "$out"
common=(--configs configs/1p3b_lowrank.json --micro-batch-size 8 --steps ${STEPS:-30} --warmup 10 --modes compile
        --variant 'fused:optimizer.implementation="fused";parallel.zero_stage=0'
        --variant 'fused_z1:optimizer.implementation="fused";parallel.zero_stage=1')
CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_train.py --nproc 1 "${common[@]}" --out "$out/fused_1gpu.json" \
    2>&1 | grep -v "^\[20" | tail -5
python3 benchmarks/bench_train.py --nproc 2 "${common[@]}" --out "$out/fused_2gpu.json" 2>&1 | grep -v "^\[20" | tail -5
