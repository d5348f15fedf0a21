#!/usr/bin/env bash
# Tensor, pipeline and sequence parallelism on one node of 4 GPUs (issue 14): bench_train.py
# --nproc 4 runs the launcher (real data, the default fused optimizer, eager) once per layout,
# at one global batch for every layout of a model, so every layout sees the same samples and
# per-GPU throughput compares at equal work: tokens/s per GPU, MFU, peak memory and the loss
# of every step (compared with the DP4 curve afterwards).
#   benchmarks/gpu/scale_x4.sh OUT_DIR SET [SET ...]
# SETs (each fits one 10-minute call on 4 x H200, roughly):
#   1p3b      1.3B lowrank: DP4, TP2xDP2 +/- SP, TP4 +/- SP, TP2xPP2 +/- SP, PP4; micro-batch 4,
#             global 256 (64 micro-batches per pipeline of PP4); 6 steps, the last 3 timed
#   1p3b_dense  the same for 1.3B dense: DP4, TP2xDP2 SP, TP4 SP, TP2xPP2 SP, PP4
#   6p7b      6.7B lowrank: DP4, TP4 +/- SP, TP2xPP2 SP, PP4 (micro 2, global 128, 64 per pipeline)
#   6p7b_dense  6.7B dense TP4 SP and TP2xPP2 SP; 13B lowrank TP2xPP2 SP (does it train on 4 x 141 GB)
#   compiled  the runs of 2026-11-28 that met targets, each compiled unless noted: DP weak
#             scaling 1 -> 4 GPUs (1.3B lowrank, micro-batch 8 x 4 accumulation), 6.7B lowrank DP4
#             (micro-batch 4 x 4), 13B lowrank DP4 eager (micro-batch 4 x 2, the config's default
#             layout), 1.3B lowrank TP2 SP (micro-batch 8 x 4); about 6 minutes
#   traced    compiled tensor parallelism with the collectives traced into the graphs (parallel/
#             collectives.py), at equal per-GPU micro-batch 8 against DP4: 1.3B lowrank DP4, TP2xDP2
#             SP, TP4 SP, TP2xPP2 SP (global batch 128: 16 micro-batches per pipeline), compiled; ~8 minutes
#   sp_memory 6.7B lowrank TP4, micro-batch 16, sequence parallelism off and on (peak memory; the
#             planner predicts 52.3 -> 39.4 GB allocated, -25%), eager, 3 steps
# FFN init 'normal' (the paper's SVD init of 6.7B-13B factors costs minutes and no speed).
set -uo pipefail
out=${1:?usage: benchmarks/gpu/scale_x4.sh OUT_DIR SET [SET ...]}; shift
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../.."
. benchmarks/gpu/setup_env.sh
TP2='tp2:parallel.tensor=2' TP2SP='tp2sp:parallel.tensor=2;parallel.sequence_parallel=true'
TP4='tp4:parallel.tensor=4' TP4SP='tp4sp:parallel.tensor=4;parallel.sequence_parallel=true'
TP2PP2='tp2pp2:parallel.tensor=2;parallel.pipeline=2'
TP2PP2SP='tp2pp2sp:parallel.tensor=2;parallel.pipeline=2;parallel.sequence_parallel=true'
PP4='pp4:parallel.pipeline=4'

bench() {  # NAME CONFIG MICRO ACCUM STEPS WARMUP [o:OVERRIDE ...] [VARIANT ...]; the config as given runs first
  local name=$1 config=$2 micro=$3 accum=$4 steps=$5 warmup=$6; shift 6
  local variants=(); for v in "$@"; do
    case $v in o:*) variants+=(--override "${v#o:}") ;; *) variants+=(--variant "$v") ;; esac
  done
  echo "== $name: $config micro $micro x accumulation $accum x 4, $(date +%T)"
  python3 benchmarks/bench_train.py --configs "$config" --nproc 4 --modes eager --micro-batch-size "$micro" \
      --grad-accumulation "$accum" --steps "$steps" --warmup "$warmup" --override model.ffn.init=\"normal\" \
      "${variants[@]}" --keep-logs "$out/logs_$name" --out "$out/$name.json" 2>&1 | grep -v "^\[20" | tail -4
}

for set in "$@"; do
  case $set in
    1p3b) bench 1p3b configs/1p3b_lowrank.json 4 16 6 3 "$TP2SP" "$TP4SP" "$TP2PP2SP" "$PP4" "$TP4" "$TP2" "$TP2PP2" ;;
    1p3b_dense) bench 1p3b_dense configs/1p3b_dense.json 4 16 6 3 "$TP2SP" "$TP4SP" "$TP2PP2SP" "$PP4" ;;
    6p7b) bench 6p7b configs/6p7b_lowrank.json 2 16 5 2 "$TP4SP" "$TP2PP2SP" "$TP4" "$PP4" ;;
    6p7b_dense)
      bench 6p7b_dense configs/6p7b_dense.json 2 16 5 2 o:parallel.tensor=4 o:parallel.sequence_parallel=true \
          "$TP2PP2SP"
      bench 13b configs/13b_lowrank.json 2 16 4 2 o:parallel.tensor=2 o:parallel.pipeline=2 \
          o:parallel.sequence_parallel=true ;;
    compiled)
      for n in 1 4; do
        python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc $n --modes compile \
            --micro-batch-size 8 --grad-accumulation 4 --steps 20 --warmup 10 --out "$out/dp_weak_n$n.json" 2>&1 | tail -2
      done
      python3 benchmarks/bench_train.py --configs configs/6p7b_lowrank.json --nproc 4 --modes compile \
          --micro-batch-size 4 --grad-accumulation 4 --steps 4 --warmup 2 --override model.ffn.init=\"normal\" \
          --out "$out/6p7b_dp4_compiled.json" 2>&1 | tail -2
      python3 benchmarks/bench_train.py --configs configs/13b_lowrank.json --nproc 4 --modes eager \
          --micro-batch-size 4 --grad-accumulation 2 --steps 4 --warmup 2 --override model.ffn.init=\"normal\" \
          --out "$out/13b_dp4.json" 2>&1 | tail -2
      python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 4 --modes compile \
          --micro-batch-size 8 --grad-accumulation 4 --steps 6 --warmup 2 --override parallel.tensor=2 \
          --override parallel.sequence_parallel=true --out "$out/tp2sp_compiled.json" 2>&1 | tail -2 ;;
    traced)
      for layout in "dp4:" "tp2sp:parallel.tensor=2;parallel.sequence_parallel=true" \
                    "tp4sp:parallel.tensor=4;parallel.sequence_parallel=true" \
                    "tp2pp2sp:parallel.tensor=2;parallel.pipeline=2;parallel.sequence_parallel=true"; do
        name=${layout%%:*}; overrides=(); IFS=';' read -ra kv <<< "${layout#*:}"
        for o in "${kv[@]}"; do overrides+=(--override "$o"); done
        echo "== traced $name, $(date +%T)"
        python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 4 --modes compile \
            --micro-batch-size 8 --grad-accumulation 4 --steps 6 --warmup 3 "${overrides[@]}" \
            --keep-logs "$out/logs_traced_$name" --out "$out/traced_$name.json" 2>&1 | tail -2
      done ;;
    sp_memory)
      bench sp_memory configs/6p7b_lowrank.json 16 1 3 1 o:parallel.tensor=4 "$TP4SP" ;;
    *) echo "unknown set '$set'" >&2; exit 2 ;;
  esac
done
python3 benchmarks/bench_train.py --table-from "$out"/*.json --out "$out/scale_all.json" 2>&1 | tail -40
