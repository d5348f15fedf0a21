#!/usr/bin/env bash
# Why tensor parallelism 2 with CUDA graphs hung (issue 14; 2 GPUs, no DeepSpeed, no data):
# bench_tp_path.py --tensor-parallel 2 replays the traced TP2 SP blocks of the 1.3B model as
# CUDA-graph trees (torch.compile reduce-overhead), micro-batch 8, under a few NCCL / c10d
# settings. Each case runs under --case-timeout 150: a hung case comes back as HUNG with both
# ranks' Python stacks (dumped 15 s before the kill) and the next case still runs. Case
# `plain` first: the traced TP2 path without graphs against each GPU's own plain model (the
# per-GPU baseline), which is also the first traced-TP measurement on two GPUs. ~9 minutes for the default four.
# Every case's table has a drift column: the replayed steps that see step 0's batch again must
# give its loss; a collective racing the kernels beside it inside the graphs (the wrong results of
# pytorch/pytorch#113895, functional collectives under CUDA-graph trees) would show there.
# Cases: plain; default (TORCH_LOGS=cudagraphs: every warm-up, recording and replay, so a
# re-recording at each step shows); noreg (NCCL_GRAPH_REGISTER=0: NCCL registers the buffers of
# captured collectives with the peers while capturing, a candidate for ranks waiting on each
# other); nomix (NCCL_GRAPH_MIXING_SUPPORT=0); noasync (c10d's watchdog error handling off).
#   benchmarks/gpu/tp_cuda_graphs_x2.sh OUT_DIR [CASE ...]
set -uo pipefail
out=${1:?usage: benchmarks/gpu/tp_cuda_graphs_x2.sh OUT_DIR [CASE ...]}; shift
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(plain default noreg nomix)
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
. benchmarks/gpu/setup_env.sh
common=(--config configs/1p3b_lowrank.json --tensor-parallel 2 --micro-batch-size 8 --case-timeout 150)
for case in "${cases[@]}"; do
  echo "== $case $(date +%T)"
  case $case in
    plain) python3 benchmarks/bench_tp_path.py "${common[@]}" --modes plain-compiled tp-traced \
               --out "$out/tp2_traced.json" ;;
    default) TORCH_LOGS=cudagraphs python3 benchmarks/bench_tp_path.py "${common[@]}" --modes tp-traced --compile-mode reduce-overhead \
               --out "$out/tp2_graphs_default.json" ;;
    noreg) NCCL_GRAPH_REGISTER=0 python3 benchmarks/bench_tp_path.py "${common[@]}" --modes tp-traced \
               --compile-mode reduce-overhead --out "$out/tp2_graphs_noreg.json" ;;
    nomix) NCCL_GRAPH_MIXING_SUPPORT=0 python3 benchmarks/bench_tp_path.py "${common[@]}" --modes tp-traced \
               --compile-mode reduce-overhead --out "$out/tp2_graphs_nomix.json" ;;
    noasync) TORCH_NCCL_ASYNC_ERROR_HANDLING=0 TORCH_NCCL_ENABLE_MONITORING=0 python3 benchmarks/bench_tp_path.py \
               "${common[@]}" --modes tp-traced --compile-mode reduce-overhead --out "$out/tp2_graphs_noasync.json" ;;
    *) echo "unknown case $case"; exit 2 ;;
  esac 2>&1 | grep -v "^\[20" | tail -60
done
