# megatron_sffn against the plain-PyTorch reference, 1.3B, one GPU per kind, the same run on the same GPU
# ARGS: KIND [KIND ...] of dense lowrank blockdense blockshuffle sgt ledger; or `table` alone (the tables so far)
# A 1.3B kind: bench_train.py --reference runs the launcher's default path (--compile, optimizer auto =
# fused) and then benchmarks/bench_reference.py (whole-model torch.compile) on the same GPU: micro-batch
# 8 x 1024, one optimizer step per micro-batch, 30 steps, the last 20 timed; it prints megatron_sffn /
# reference. `sgt`: 1p3b_lowrank_sgt with --guided, 60 base steps (25 guided, then the drop and 60 more):
# the guided phase's tokens/s and MFU on the guide FLOPs its steps executed, against the unguided phase.
# Kinds run side by side, one per GPU (more kinds than GPUs queue on them in turn); a kind takes about
# 5 minutes: one kind per call on one GPU, `dense lowrank blockdense blockshuffle` in one call on four.
# Every call ends with the tables of every kind in OUT so far (OUT/bench_KIND.json, together in
# OUT/reference_all.json). Logs: OUT/logs/. GPUS="3" (ids) picks the GPUs; default: every GPU
# nvidia-smi lists. SMOKE=1 runs the same plumbing on a CPU with bench_train's tiny smoke model.
# `ledger`: benchmarks/bench_ledger.py, on the first GPU after the kinds: per step, ms by category
# (GEMMs, attention, elementwise/norm, optimizer, gradient copies and casts, cross-entropy, other,
# idle), ours (the launcher's default: compiled blocks, CUDA graphs, fused optimizer) against the
# compiled reference, micro-batch 8, each side in its own process; one run per 1.3B config of
# LEDGER_CONFIGS (default "dense lowrank"; "lowrank" alone where both do not fit one call), each
# writing OUT/ledger_CONFIG.txt (the table) and OUT/ledger_CONFIG.json. CONFIG_fp8 (e.g. dense_fp8):
# our side with training.fp8.enabled (its row "FP8 scales and casts"), the reference in bf16;
# CONFIG_fp8keep the same with training.fp8.keep_casts.
mkdir -p "$out/logs"
smoke=(); mode=compile; [ "${SMOKE:-0}" = 1 ] && smoke=(--smoke --steps 8 --warmup 1) && mode=eager
ledger_smoke=(); [ "${SMOKE:-0}" = 1 ] && ledger_smoke=(--smoke)

run_kind() {  # KIND GPU
  local args
  case $1 in
    dense|lowrank|blockdense|blockshuffle)
      args=(--configs "configs/1p3b_$1.json" --reference --steps "${STEPS:-30}" --warmup 10) ;;
    sgt) args=(--configs configs/1p3b_lowrank_sgt.json --guided --steps "${SGT_STEPS:-60}" --warmup 5) ;;
    *) echo "unknown kind '$1' (dense lowrank blockdense blockshuffle sgt)" >&2; return 2 ;;
  esac
  CUDA_VISIBLE_DEVICES=$2 python3 benchmarks/bench_train.py "${args[@]}" "${smoke[@]}" --modes "$mode" \
      --micro-batch-size 8 --keep-logs "$out/logs/$1" --out "$out/bench_$1.json" > "$out/logs/$1.log" 2>&1
  local code=$?; echo "$code" > "$out/logs/$1.exit"
  echo "$1 (GPU $2): exit $code, $(date +%T) (log $out/logs/$1.log)"
}

ledger_config() {  # NAME[_fp8|_fp8keep] -> the config's name
  local name=${1%_fp8keep}; echo "${name%_fp8}"
}

run_ledger() {  # CONFIG[_fp8|_fp8keep] GPU
  local config fp8=()
  config=$(ledger_config "$1")
  [ "$config" != "$1" ] && fp8=(--override training.fp8.enabled=true)
  [ "${1%_fp8keep}" != "$1" ] && fp8+=(--override training.fp8.keep_casts=true)
  MEGATRON_SFFN_FP8_ON_CPU=${SMOKE:-0} CUDA_VISIBLE_DEVICES=$2 python3 benchmarks/bench_ledger.py \
      --configs "configs/1p3b_$config.json" --micro-batch-size 8 "${fp8[@]}" \
      "${ledger_smoke[@]}" --out "$out/ledger_$1.json" > "$out/ledger_$1.txt" 2> "$out/logs/ledger_$1.log"
  local code=$?; echo "$code" > "$out/logs/ledger_$1.exit"
  echo "ledger $1 (GPU $2): exit $code, $(date +%T) (log $out/logs/ledger_$1.log)"; cat "$out/ledger_$1.txt"
}

kinds=(); ledger=0
for kind in "$@"; do
  case $kind in dense|lowrank|blockdense|blockshuffle|sgt) kinds+=("$kind") ;;
    ledger) ledger=1 ;;
    table) [ $# -eq 1 ] || { echo "error: 'table' goes alone (the tables of OUT so far)" >&2; exit 2; } ;;
    *) echo "error: unknown kind '$kind' (dense lowrank blockdense blockshuffle sgt ledger, or table)" >&2; exit 2 ;;
  esac
done
ledger_configs=${LEDGER_CONFIGS:-dense lowrank}
for config in $ledger_configs; do
  case $(ledger_config "$config") in dense|lowrank|blockdense|blockshuffle) ;;
    *) echo "error: unknown LEDGER_CONFIGS entry '$config' (dense lowrank blockdense blockshuffle, each also as NAME_fp8 or NAME_fp8keep)" >&2
       exit 2 ;;
  esac
done
if [ -n "${GPUS:-}" ]; then read -ra ids <<< "$GPUS"; else
  n=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$n" -ge 1 ] || n=1; ids=($(seq 0 $((n - 1)))); fi
gpus=${#ids[@]}
status=0
for ((g = 0; g < gpus && g < ${#kinds[@]}; g++)); do
  ( for ((i = g; i < ${#kinds[@]}; i += gpus)); do run_kind "${kinds[$i]}" "${ids[$g]}"; done ) &
done
wait
for kind in "${kinds[@]}"; do [ "$(cat "$out/logs/$kind.exit" 2>/dev/null)" = 0 ] || status=1; done
if [ "$ledger" = 1 ]; then
  for config in $ledger_configs; do
    run_ledger "$config" "${ids[0]}"; [ "$(cat "$out/logs/ledger_$config.exit")" = 0 ] || status=1
  done
  [ ${#kinds[@]} -eq 0 ] && exit "$status"  # the ledger alone: no kind tables to print
fi
results=("$out"/bench_*.json)
[ -e "${results[0]}" ] || { echo "no results in $out" >&2; exit 1; }
python3 benchmarks/bench_train.py --table-from "${results[@]}" --out "$out/reference_all.json" | grep -v "^\[20"
exit "$status"
