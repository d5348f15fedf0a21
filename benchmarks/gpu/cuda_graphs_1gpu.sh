#!/usr/bin/env bash
# training.cuda_graphs on one GPU (issue 14): bench_train.py runs the launcher's default compiled path
# and the same with --cuda-graphs (each compiled block's forward and backward replayed as CUDA graphs)
# at a GPU-bound micro-batch (8) and a host-bound one (2), with gradient accumulation, and keeps
# both runs' step logs so their losses can be compared step by step. About 5 minutes on an H200.
#   benchmarks/gpu/cuda_graphs_1gpu.sh OUT_DIR [CONFIG]
set -uo pipefail
out=${1:?usage: benchmarks/gpu/cuda_graphs_1gpu.sh OUT_DIR [CONFIG]}
config=${2:-configs/1p3b_lowrank.json}
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
. benchmarks/gpu/setup_env.sh
for micro_accum in "8 2" "2 4"; do
  set -- $micro_accum
  python3 benchmarks/bench_train.py --configs "$config" --nproc 1 --modes compile --micro-batch-size "$1" \
      --grad-accumulation "$2" --steps 20 --warmup 10 --variant "cuda_graphs:training.cuda_graphs=true" \
      --keep-logs "$out/logs_mb$1" --out "$out/cuda_graphs_mb$1.json" 2>&1 | grep -v "^\[20" | tail -6
done
