#!/usr/bin/env bash
# megatron_sffn against the plain-PyTorch reference, one GPU per kind (issue 15). For a 1.3B kind
# (dense, lowrank, blockdense, blockshuffle) bench_train.py --reference runs the launcher's default
# path (--compile, optimizer auto = fused) and then benchmarks/bench_reference.py (whole-model
# torch.compile) on the same GPU: micro-batch 8 x 1024, one optimizer step per micro-batch, 30 steps,
# median of steps 11-30, and prints megatron_sffn / reference. Kind "sgt": 1p3b_lowrank_sgt with
# --guided, 60 base steps (25 guided, then the drop and 60 more): the guided phase's tokens/s and MFU
# counting the guide FLOPs its steps executed, against the unguided phase of the same run.
#   benchmarks/gpu/reference_1gpu.sh OUT_DIR KIND [KIND ...]
# Kinds run side by side, one per GPU (CUDA_VISIBLE_DEVICES=0, 1, ...; more kinds than GPUs queue on
# them in turn). One kind takes about 5 minutes (two compiled 1.3B runs), so: on one GPU one kind per
# call; on 4 GPUs `dense lowrank blockdense blockshuffle` in one call, then `sgt`. Each call ends with
# the tables of every kind measured in OUT_DIR so far (OUT_DIR/bench_KIND.json, all together in
# OUT_DIR/reference_all.json); alone: `... OUT_DIR table`. Logs: OUT_DIR/logs/.
# GPUS="3" (ids) picks the GPUs, e.g. beside another job; default every GPU nvidia-smi lists.
# SMOKE=1 runs the same plumbing on a CPU with bench_train's tiny smoke model.
set -uo pipefail
out=${1:?usage: benchmarks/gpu/reference_1gpu.sh OUT_DIR KIND [KIND ...]}; shift
mkdir -p "$out/logs"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
. benchmarks/gpu/setup_env.sh
smoke=(); mode=compile; [ "${SMOKE:-0}" = 1 ] && smoke=(--smoke --steps 8 --warmup 1) && mode=eager

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

kinds=("$@"); [ "${kinds[*]:-}" = table ] && kinds=()
if [ -n "${GPUS:-}" ]; then read -ra ids <<< "$GPUS"; else
  n=$(nvidia-smi -L 2>/dev/null | wc -l); [ "$n" -ge 1 ] || n=1; ids=($(seq 0 $((n - 1)))); fi
gpus=${#ids[@]}
status=0
for ((g = 0; g < gpus && g < ${#kinds[@]}; g++)); do
  ( for ((i = g; i < ${#kinds[@]}; i += gpus)); do run_kind "${kinds[$i]}" "${ids[$g]}"; done ) &
done
wait
for kind in "${kinds[@]}"; do [ "$(cat "$out/logs/$kind.exit" 2>/dev/null)" = 0 ] || status=1; done
results=("$out"/bench_*.json)
[ -e "${results[0]}" ] || { echo "no results in $out" >&2; exit 1; }
python3 benchmarks/bench_train.py --table-from "${results[@]}" --out "$out/reference_all.json" | grep -v "^\[20"
exit "$status"
