# data, tensor, pipeline and sequence parallelism through the launcher on 2 and 4 GPUs of one host
# ARGS: SET [SET ...] of
#   layouts_2gpu   TWO GPUs, 1.3B lowrank eager, micro-batch 8: 1 GPU, then data / tensor / pipeline
#                  parallel 2, each a 50-step launcher run with the loss logged; then the tensor group's
#                  collective bytes and step time of TP2 lowrank against TP2 dense (bench_scaling.py)
#   fused_dp_1, fused_dp_2   data-parallel weak scaling of the fused optimizer (ZeRO 0: bucketed
#                  all-reduce, ZeRO 1: bucketed reduce-scatter + all-gather, overlapped with backward)
#                  against DeepSpeed's ZeRO-1 path: 1.3B lowrank eager, micro-batch 8, one step per
#                  micro-batch, on GPU 0 alone (fused_dp_1) and on 2 GPUs (fused_dp_2); ~5 minutes each
# FOUR GPUs (each fits one 10-minute call on 4 x H200, roughly): bench_train.py --nproc 4 runs the
# launcher (real data, the default fused optimizer, eager) once per layout at one global batch per
# model, so every layout sees the same samples: tokens/s per GPU, MFU, peak memory, the loss of every
# step. FFN init 'normal' (the paper's SVD init of 6.7B-13B factors costs minutes and no speed).
#   1p3b       1.3B lowrank: DP4, TP2xDP2 +/- SP, TP4 +/- SP, TP2xPP2 +/- SP, PP4; micro-batch 4,
#              global 256 (64 micro-batches per pipeline of PP4); 6 steps, the last 3 timed
#   1p3b_dense the same for 1.3B dense: DP4, TP2xDP2 SP, TP4 SP, TP2xPP2 SP, PP4
#   6p7b       6.7B lowrank: DP4, TP4 +/- SP, TP2xPP2 SP, PP4 (micro 2, global 128, 64 per pipeline)
#   6p7b_dense 6.7B dense TP4 SP and TP2xPP2 SP; 13B lowrank TP2xPP2 SP
#   compiled   compiled unless noted: DP weak scaling 1 -> 4 GPUs (1.3B lowrank, micro-batch 8 x 4
#              accumulation), 6.7B lowrank DP4 (micro-batch 4 x 4), 13B lowrank DP4 eager (micro-batch
#              4 x 2, the config's default layout), 1.3B lowrank TP2 SP (micro-batch 8 x 4); ~6 minutes
#   traced     compiled tensor parallelism with the collectives traced into the graphs, at equal per-GPU
#              micro-batch 8 against DP4: 1.3B lowrank DP4, TP2xDP2 SP, TP4 SP, TP2xPP2 SP (global batch
#              128: 16 micro-batches per pipeline); ~8 minutes
#   sp_memory  6.7B lowrank TP4, micro-batch 16, sequence parallelism off and on (peak memory), eager,
#              3 steps
TP2='tp2:parallel.tensor=2;parallel.sequence_parallel=false' TP2SP='tp2sp:parallel.tensor=2;parallel.sequence_parallel=true'
TP4='tp4:parallel.tensor=4;parallel.sequence_parallel=false' TP4SP='tp4sp:parallel.tensor=4;parallel.sequence_parallel=true'
TP2PP2='tp2pp2:parallel.tensor=2;parallel.pipeline=2;parallel.sequence_parallel=false'
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

fused_dp() {  # NPROC
  local nproc=$1
  ( [ "$nproc" = 1 ] && export CUDA_VISIBLE_DEVICES=0
    python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc "$nproc" --micro-batch-size 8 \
        --steps ${STEPS:-30} --warmup 10 --modes eager \
        --variant 'fused:optimizer.implementation="fused";parallel.zero_stage=0' \
        --variant 'fused_z1:optimizer.implementation="fused";parallel.zero_stage=1' \
        --out "$out/fused_${nproc}gpu.json" 2>&1 | grep -v "^\[20" | tail -6 )
}

layouts_2gpu() {
  local common=(--micro-batch-size 8 --steps 50 --warmup 10 --modes eager --keep-logs "$out/logs")
  CUDA_VISIBLE_DEVICES=0 python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 1 \
      "${common[@]}" --out "$out/train_1gpu.json" 2>&1 | grep -v "^\[20" | tail -3
  python3 benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --nproc 2 "${common[@]}" \
      --variant 'tp2:parallel.tensor=2;parallel.sequence_parallel=false' --variant 'pp2:parallel.pipeline=2' \
      --out "$out/train_2gpu.json" 2>&1 | grep -v "^\[20" | tail -6
  for kind in lowrank dense; do
    python3 benchmarks/bench_scaling.py --config configs/1p3b_$kind.json --sweep 2x1x1 --steps 10 --warmup 5 \
        --override training.micro_batch_size=8 --override training.global_batch_size=8 \
        --out "$out/tp2_$kind.json" 2>&1 | grep "^t2"
  done
}

[ $# -ge 1 ] || { echo "error: suite 'scale' needs a set: layouts_2gpu fused_dp_1 fused_dp_2 1p3b 1p3b_dense 6p7b 6p7b_dense compiled traced sp_memory" >&2; exit 2; }
x4=0
for set in "$@"; do
  case $set in
    layouts_2gpu) layouts_2gpu ;;
    fused_dp_1) fused_dp 1 ;;
    fused_dp_2) fused_dp 2 ;;
    1p3b) x4=1; bench 1p3b configs/1p3b_lowrank.json 4 16 6 3 "$TP2SP" "$TP4SP" "$TP2PP2SP" "$PP4" "$TP4" "$TP2" "$TP2PP2" ;;
    1p3b_dense) x4=1; bench 1p3b_dense configs/1p3b_dense.json 4 16 6 3 "$TP2SP" "$TP4SP" "$TP2PP2SP" "$PP4" ;;
    6p7b) x4=1; bench 6p7b configs/6p7b_lowrank.json 2 16 5 2 "$TP4SP" "$TP2PP2SP" "$TP4" "$PP4" ;;
    6p7b_dense) x4=1
      bench 6p7b_dense configs/6p7b_dense.json 2 16 5 2 o:parallel.tensor=4 o:parallel.sequence_parallel=true \
          "$TP2PP2SP"
      bench 13b configs/13b_lowrank.json 2 16 4 2 o:parallel.tensor=2 o:parallel.pipeline=2 \
          o:parallel.sequence_parallel=true ;;
    compiled) x4=1
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
    traced) x4=1
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
    sp_memory) x4=1; bench sp_memory configs/6p7b_lowrank.json 16 1 3 1 o:parallel.tensor=4 o:parallel.sequence_parallel=false "$TP4SP" ;;
    *) echo "error: unknown set '$set' of suite 'scale' (layouts_2gpu fused_dp_1 fused_dp_2 1p3b 1p3b_dense 6p7b" \
            "6p7b_dense compiled traced sp_memory)" >&2; exit 2 ;;
  esac
done
[ "$x4" = 0 ] || python3 benchmarks/bench_train.py --table-from "$out"/*.json --out "$out/scale_all.json" 2>&1 | tail -40
