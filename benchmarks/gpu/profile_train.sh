#!/usr/bin/env bash
# Where a 1.3B training step goes on one GPU (fused optimizer, ZeRO 0, micro-batch 8):
# benchmarks/bench_scaling.py --profile for lowrank and dense compiled and lowrank eager,
# each a kernel table + busy/idle summary (TXT and JSON under OUT); then lowrank compiled at
# micro-batch 16, timed only.      benchmarks/gpu/profile_train.sh OUT_DIR
set -uo pipefail
out=$1; mkdir -p "$out"
common=(--override training.global_batch_size=MB --override self_guided.enabled=false
        --override 'optimizer.implementation="fused"' --override parallel.zero_stage=0 --steps 10 --warmup 5)
run() {  # name config micro-batch compile [profile]
  local args=("${common[@]/MB/$3}")
  python3 benchmarks/bench_scaling.py --config "configs/1p3b_$2.json" --override training.micro_batch_size=$3 \
      --override training.compile=$4 "${args[@]}" --out "$out/scal_$1.json" ${5:+--profile "$out/profile_$1.txt"} \
      2>&1 | grep -v "Warning\|warn(\|^\[20"
}
run lowrank_compiled lowrank 8 true p
run dense_compiled dense 8 true p
run lowrank_eager lowrank 8 false p
run lowrank_compiled_mb16 lowrank 16 true
