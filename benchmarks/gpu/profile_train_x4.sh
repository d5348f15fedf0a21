#!/usr/bin/env bash
# profile_train.sh's four cases side by side, one per GPU of a 4-GPU host (same cases, same
# flags): lowrank and dense compiled and lowrank eager profiled, lowrank compiled at micro-batch
# 16 timed.      benchmarks/gpu/profile_train_x4.sh OUT_DIR
set -uo pipefail
out=$1; mkdir -p "$out"
. benchmarks/gpu/setup_env.sh
common=(--override self_guided.enabled=false --override 'optimizer.implementation="fused"'
        --override parallel.zero_stage=0 --steps 10 --warmup 5)
run() {  # gpu name config micro-batch compile [profile]
  CUDA_VISIBLE_DEVICES=$1 python3 benchmarks/bench_scaling.py --config "configs/1p3b_$3.json" \
      --override training.micro_batch_size=$4 --override training.global_batch_size=$4 \
      --override training.compile=$5 "${common[@]}" --out "$out/scal_$2.json" ${6:+--profile "$out/profile_$2.txt"} \
      > "$out/$2.log" 2>&1
  echo "$2: exit $?"
}
run 0 lowrank_compiled lowrank 8 true p &
run 1 dense_compiled dense 8 true p &
run 2 lowrank_eager lowrank 8 false p &
run 3 lowrank_compiled_mb16 lowrank 16 true &
wait
