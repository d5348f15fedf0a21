#!/usr/bin/env bash
# The two 2-GPU scripts of issue 14 side by side on one 4-GPU machine (device time counts per
# machine, not per GPU): tp_cuda_graphs_x2.sh on GPUs 0,1 and tp_x2.sh on GPUs 2,3, each pair
# NVLink-connected and with its own rendezvous port (bench_train.py passes CUDA_VISIBLE_DEVICES to
# DeepSpeed's launcher as --include and picks a free --master_port; bench_tp_path.py's ranks
# pick their own). The host is shared, so read each pair's ratios within its own run. Each half
# is stopped at 560 s so the call leaves both halves' files.
#   benchmarks/gpu/pairs_x4.sh OUT_DIR [GRAPH_CASE ...]   (default: plain default noreg)
set -uo pipefail
out=${1:?usage: benchmarks/gpu/pairs_x4.sh OUT_DIR [GRAPH_CASE ...]}; shift
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(plain default noreg)
mkdir -p "$out/graphs_x2" "$out/tp_x2"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
CUDA_VISIBLE_DEVICES=0,1 timeout 560 benchmarks/gpu/tp_cuda_graphs_x2.sh "$out/graphs_x2" "${cases[@]}" \
    > "$out/graphs_x2.txt" 2>&1 &
graphs=$!
CUDA_VISIBLE_DEVICES=2,3 timeout 560 benchmarks/gpu/tp_x2.sh "$out/tp_x2" > "$out/tp_x2.txt" 2>&1 &
tp=$!
wait $graphs; echo "== tp_cuda_graphs_x2 on GPUs 0,1 (exit $?)"; tail -40 "$out/graphs_x2.txt"
wait $tp; echo "== tp_x2 on GPUs 2,3 (exit $?)"; tail -20 "$out/tp_x2.txt"
