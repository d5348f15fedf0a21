#!/usr/bin/env bash
# Data-parallel weak scaling of optimizer.implementation = fused (ZeRO 0: bucketed all-reduce,
# ZeRO 1: bucketed reduce-scatter + all-gather, both overlapped with backward) against
# DeepSpeed's ZeRO-1 path: 1.3B lowrank, eager (as layouts_2gpu.sh), micro-batch 8, one step per
# micro-batch. One call per GPU count keeps a call near 5 minutes (three launcher runs):
#   benchmarks/gpu/fused_dp_2gpu.sh OUT_DIR 1      # on GPU 0 alone
#   benchmarks/gpu/fused_dp_2gpu.sh OUT_DIR 2      # data parallel 2
set -uo pipefail
out=$1; nproc=${2:-2}; mkdir -p "$out"
[ "$nproc" = 1 ] && export CUDA_VISIBLE_DEVICES=0
python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc "$nproc" --micro-batch-size 8 \
    --steps ${STEPS:-30} --warmup 10 --modes eager \
    --variant 'fused:optimizer.implementation="fused";parallel.zero_stage=0' \
    --variant 'fused_z1:optimizer.implementation="fused";parallel.zero_stage=1' \
    --out "$out/fused_${nproc}gpu.json" 2>&1 | grep -v "^\[20" | tail -6
