#!/usr/bin/env bash
# The tensor-parallel code path's host cost on ONE GPU (issue 14): bench_tp_path.py runs the
# 1.3B model plain and through its tensor-parallel path on a tensor group of one rank (real NCCL
# calls, no peers, no link), eager, compiled with the collectives outside the graphs, and compiled
# with them traced in. Each mode compiles the 24 blocks once (~1 min on an H200).
#   benchmarks/gpu/tp_path_1gpu.sh OUT_DIR [CONFIG] [extra bench_tp_path.py args]
set -uo pipefail
out=${1:?usage: benchmarks/gpu/tp_path_1gpu.sh OUT_DIR [CONFIG] [ARGS...]}; shift
config=${1:-configs/1p3b_lowrank.json}; shift || true
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
. benchmarks/gpu/setup_env.sh
name=$(basename "$config" .json)
python3 benchmarks/bench_tp_path.py --config "$config" "$@" --out "$out/tp_path_$name.json" 2>&1 \
    | grep -v "^\[20" | tail -20
