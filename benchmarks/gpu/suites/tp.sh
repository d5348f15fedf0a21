# the tensor-parallel path: its host cost on one GPU, TP2 against DP2 on two, TP2 with CUDA graphs
# ARGS: CASE [CASE ...] of
#   path [bench_tp_path.py args ...]   ONE GPU: diagnostics/bench_tp_path.py runs the 1.3B model
#            (CONFIG, default configs/1p3b_lowrank.json) plain and through its tensor-parallel path on a
#            tensor group of one rank (real NCCL calls, no peers, no link): eager, compiled with the
#            collectives outside the graphs, compiled with them traced in (each mode compiles the 24
#            blocks once, ~1 min on an H200); the rest of the line goes to the script, e.g.
#            `path --micro-batch-size 1 --compile-mode reduce-overhead --modes plain-compiled tp-traced`
#   x2       TWO GPUs: 1.3B lowrank compiled, per-GPU micro-batch 8, global batch 64: TP2 SP with the
#            collectives traced into the graphs, DP2, TP2 SP with them outside the graphs
#            (training.trace_collectives=false); each run under `timeout 200`; ~5 minutes
#   graphs_x2 [plain default noreg nomix noasync]   TWO GPUs (default: plain default noreg nomix):
#            bench_tp_path.py --tensor-parallel 2 replays the traced TP2 SP blocks as CUDA-graph trees
#            (reduce-overhead), micro-batch 8, under NCCL / c10d settings, each case under
#            --case-timeout 150 (a hung case comes back as HUNG with both ranks' Python stacks). plain:
#            the traced TP2 path without graphs against each GPU's plain model; default:
#            TORCH_LOGS=cudagraphs; noreg: NCCL_GRAPH_REGISTER=0; nomix: NCCL_GRAPH_MIXING_SUPPORT=0;
#            noasync: c10d's watchdog error handling off. Each table's drift column checks that replayed
#            steps repeat step 0's loss (pytorch/pytorch#113895: functional collectives racing under
#            CUDA-graph trees). The rest of the line is its cases; ~9 minutes for the default four
#   pairs_x4 [GRAPH_CASE ...]   FOUR GPUs: graphs_x2 (default: plain default noreg) on GPUs 0,1 and x2
#            on GPUs 2,3 side by side, each half stopped at 560 s (read each pair's ratios within its run)
config=${CONFIG:-configs/1p3b_lowrank.json}

tp2_vs_dp2() {
  local SP=(--override parallel.tensor=2 --override parallel.sequence_parallel=true) extra case
  for case in tp2sp dp2 tp2sp_outside; do
    case $case in
      tp2sp) extra=("${SP[@]}") ;;
      dp2) extra=() ;;
      tp2sp_outside) extra=("${SP[@]}" --override training.trace_collectives=false) ;;
    esac
    echo "== $case $(date +%T)"
    timeout 200 python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 2 --modes compile \
        --micro-batch-size 8 --grad-accumulation 4 --steps 12 --warmup 6 "${extra[@]}" \
        --keep-logs "$out/logs_$case" --out "$out/$case.json" 2>&1 | grep -v "^\[20" | tail -3
  done
}

tp2_graphs() {  # [CASE ...]
  local cases=("$@") common=(--config configs/1p3b_lowrank.json --tensor-parallel 2 --micro-batch-size 8 --case-timeout 150)
  [ ${#cases[@]} -eq 0 ] && cases=(plain default noreg nomix)
  for case in "${cases[@]}"; do
    echo "== $case $(date +%T)"
    case $case in
      plain) python3 benchmarks/diagnostics/bench_tp_path.py "${common[@]}" --modes plain-compiled tp-traced \
                 --out "$out/tp2_traced.json" ;;
      default) TORCH_LOGS=cudagraphs python3 benchmarks/diagnostics/bench_tp_path.py "${common[@]}" --modes tp-traced \
                 --compile-mode reduce-overhead --out "$out/tp2_graphs_default.json" ;;
      noreg) NCCL_GRAPH_REGISTER=0 python3 benchmarks/diagnostics/bench_tp_path.py "${common[@]}" --modes tp-traced \
                 --compile-mode reduce-overhead --out "$out/tp2_graphs_noreg.json" ;;
      nomix) NCCL_GRAPH_MIXING_SUPPORT=0 python3 benchmarks/diagnostics/bench_tp_path.py "${common[@]}" --modes tp-traced \
                 --compile-mode reduce-overhead --out "$out/tp2_graphs_nomix.json" ;;
      noasync) TORCH_NCCL_ASYNC_ERROR_HANDLING=0 TORCH_NCCL_ENABLE_MONITORING=0 python3 benchmarks/diagnostics/bench_tp_path.py \
                 "${common[@]}" --modes tp-traced --compile-mode reduce-overhead --out "$out/tp2_graphs_noasync.json" ;;
      *) echo "error: unknown graphs_x2 case '$case' (plain default noreg nomix noasync)" >&2; exit 2 ;;
    esac 2>&1 | grep -v "^\[20" | tail -60
  done
}

[ $# -ge 1 ] || { echo "error: suite 'tp' needs a case: path x2 graphs_x2 pairs_x4" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case=$1; shift
  case $case in
    path)
      name=$(basename "$config" .json)
      python3 benchmarks/diagnostics/bench_tp_path.py --config "$config" "$@" --out "$out/tp_path_$name.json" 2>&1 \
          | grep -v "^\[20" | tail -20
      set -- ;;
    x2) tp2_vs_dp2 ;;
    graphs_x2) tp2_graphs "$@"; set -- ;;
    pairs_x4)
      cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(plain default noreg); set --
      mkdir -p "$out/graphs_x2" "$out/tp_x2"
      CUDA_VISIBLE_DEVICES=0,1 timeout 560 benchmarks/gpu/run.sh tp "$out/graphs_x2" graphs_x2 "${cases[@]}" \
          > "$out/graphs_x2.txt" 2>&1 &
      graphs=$!
      CUDA_VISIBLE_DEVICES=2,3 timeout 560 benchmarks/gpu/run.sh tp "$out/tp_x2" x2 > "$out/tp_x2.txt" 2>&1 &
      tp=$!
      wait $graphs; echo "== graphs_x2 on GPUs 0,1 (exit $?)"; tail -40 "$out/graphs_x2.txt"
      wait $tp; echo "== x2 on GPUs 2,3 (exit $?)"; tail -20 "$out/tp_x2.txt" ;;
    *) echo "error: unknown case '$case' of suite 'tp' (path x2 graphs_x2 pairs_x4)" >&2; exit 2 ;;
  esac
done
