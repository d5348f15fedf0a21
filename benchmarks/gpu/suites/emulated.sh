# 4-GPU layouts measured one rank at a time on ONE GPU (tools/emulate_rank.py, bench_train.py --emulate)
# ARGS: SET [SET ...] (default: memory memory_compiled compute). bench_train.py --nproc 4 --emulate runs
# rank 0 (RANK=r: rank r) of the layout alone on torch's fake process group: its shards, ZeRO partition,
# pipeline stage and activations are real, so its peak memory is the real rank's (without NCCL's
# buffers); collectives move nothing. SETs:
#   memory   peak per GPU, cases side by side on the one GPU (only memory is read from them): 6.7B
#            lowrank and dense at TP4 with and without sequence parallelism, micro-batch 16; 1.3B
#            lowrank TP2 SP x DP2 compiled (measured for real on 4 H200); ~5 minutes
#   sp_slope 6.7B lowrank TP4 with and without SP at micro-batches 8 and 32, and the TP2 SP case again
#   memory_compiled  1.3B lowrank DP4 and 6.7B lowrank DP4, compiled (also measured for real)
#   compute  one case at a time: rank 0's step with free communication, 1.3B lowrank compiled,
#            micro-batch 8 x 4, in DP4, TP2 SP x DP2, TP2 x DP2, TP4 SP
#   compute_eager  the same eager, DP4 and TP2 SP x DP2 (the eager tensor-parallel target)
#   python_wrapper the compute set's tensor-parallel cases with training.cpp_wrapper=false (Inductor's
#            Python wrapper): after compute in one call (`emulated OUT compute python_wrapper`), what the
#            default's C++ wrapper does to a whole step
#   profile  1.3B lowrank compiled TP4 SP (one and 4 blocks per compiled region) and TP2 x DP2,
#            micro-batch 8, 128 sequences a step: bench_scaling.py --profile of the emulated rank 0 (its
#            GPU busy share, kernels, and the host's Python by own time)
#   compute_6p7b  the same for 6.7B lowrank, eager, DP4 and TP2 x PP2 SP (stage 0: its own forward
#            and backward of 64 micro-batches, no wait for the other stage)
#   compute_6p7b_compiled  TP2 x PP2 SP compiled at micro-batch 4 and 8 (64 micro-batches)
#   compute_last_stage  that layout's last stage (rank 2) at micro-batch 8, timed alone
#   last_stages  6.7B lowrank TP2 x PP2 SP compiled (stage 1 = rank 2) at micro-batch 4 and 8, PP4
#            eager micro-batch 2, stages 0 and 3: peaks against the planner's per-stage ones
#   regions  1.3B lowrank compiled TP4 SP, TP2 and DP4 (micro-batch 8 x 4), each as the default
#            makes it (4 blocks per region at tensor > 1, 1 at tensor 1) and with the other
#            (variants g1 / g4) in one run, 10 timed steps each: what a region call's host cost
#            does to each rank
#   sp_tp4, sp_tp2  1.3B lowrank compiled, micro-batch 8 x 4: DP4, then TP4 (or TP2) as the launcher's
#            default makes it (sequence parallelism on) with it off as a variant in the same process
#            (nosp); one set per call (cold compiles: DP4 ~2 min, a TP rank and its variant over 4.5)
#   collectives  what the fake group's collectives add to a TP4 SP rank: bench_emulated_collectives.py
#            (host us per traced all-gather / reduce-scatter: NCCL on one rank, the fake group as torch
#            makes it, emulate_rank --collectives one-kernel), then 1.3B lowrank compiled TP4 SP with
#            torch's fake collectives (COLLECTIVES=torch) and with one kernel each (the default), then DP4;
#            12 timed steps each (a 4-step window moves by +-10% on these hosts)
#   graphs   1.3B lowrank TP4 SP and TP2 SP compiled, with and without training.cuda_graphs
#            (MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS=1): what replaying does to a TP rank
sets=("$@"); [ ${#sets[@]} -eq 0 ] && sets=(memory memory_compiled compute)

emulate() {  # NAME CONFIG MODE MICRO ACCUM STEPS WARMUP [OVERRIDE ...]; RANK=r emulates rank r (default 0),
             # VARIANT=NAME:K=V also runs that variant beside the case, in the same process
  local name=$1 config=$2 mode=$3 micro=$4 accum=$5 steps=$6 warmup=$7; shift 7
  local overrides=(); for o in "$@"; do overrides+=(--override "$o"); done
  local variants=(); [ -n "${VARIANT:-}" ] && variants=(--variant "$VARIANT")
  overrides+=(--emulate-collectives "${COLLECTIVES:-one-kernel}")  # COLLECTIVES=torch: the fake group's own
  timeout 560 python3 benchmarks/bench_train.py --configs "$config" --nproc 4 --emulate "${RANK:-0}" --modes "$mode" \
      --micro-batch-size "$micro" --grad-accumulation "$accum" --steps "$steps" --warmup "$warmup" \
      "${overrides[@]}" "${variants[@]}" --keep-logs "$out/logs" --out "$out/$name.json" > "$out/$name.txt" 2>&1
  echo "== $name (exit $?): $(grep -E '^[a-z0-9_]+\.json ' "$out/$name.txt" | tail -1)"
}

compute_tensor_parallel() {  # SUFFIX [OVERRIDE ...]: the compute set's TP2 SP, TP2 and TP4 SP cases
  local suffix=$1; shift
  emulate "compute_1p3b_tp2sp$suffix" configs/1p3b_lowrank.json compile 8 4 8 4 parallel.tensor=2 \
      parallel.sequence_parallel=true "$@"
  emulate "compute_1p3b_tp2$suffix" configs/1p3b_lowrank.json compile 8 4 8 4 parallel.tensor=2 parallel.sequence_parallel=false "$@"
  emulate "compute_1p3b_tp4sp$suffix" configs/1p3b_lowrank.json compile 8 4 8 4 parallel.tensor=4 \
      parallel.sequence_parallel=true "$@"
}

N='model.ffn.init="normal"'
for set in "${sets[@]}"; do
  echo "== set $set $(date +%T)"
  case $set in
    memory)  # side by side in waves that fit 141 GB together
      emulate mem_6p7b_lowrank_tp4 configs/6p7b_lowrank.json eager 16 1 3 1 "$N" parallel.tensor=4 parallel.sequence_parallel=false &
      emulate mem_6p7b_lowrank_tp4sp configs/6p7b_lowrank.json eager 16 1 3 1 "$N" parallel.tensor=4 \
          parallel.sequence_parallel=true &
      emulate mem_1p3b_lowrank_tp2sp_compiled configs/1p3b_lowrank.json compile 8 4 6 2 parallel.tensor=2 \
          parallel.sequence_parallel=true &
      wait
      emulate mem_6p7b_dense_tp4 configs/6p7b_dense.json eager 16 1 3 1 "$N" parallel.tensor=4 parallel.sequence_parallel=false &
      emulate mem_6p7b_dense_tp4sp configs/6p7b_dense.json eager 16 1 3 1 "$N" parallel.tensor=4 \
          parallel.sequence_parallel=true &
      wait ;;
    sp_slope)  # the SP saving's micro-batch dependence: 6.7B lowrank TP4 at 8 and 32 (16 is in memory)
      emulate mem_6p7b_lowrank_tp4_mb32 configs/6p7b_lowrank.json eager 32 1 3 1 "$N" parallel.tensor=4 parallel.sequence_parallel=false &
      emulate mem_6p7b_lowrank_tp4sp_mb8 configs/6p7b_lowrank.json eager 8 1 3 1 "$N" parallel.tensor=4 \
          parallel.sequence_parallel=true &
      wait
      emulate mem_6p7b_lowrank_tp4sp_mb32 configs/6p7b_lowrank.json eager 32 1 3 1 "$N" parallel.tensor=4 \
          parallel.sequence_parallel=true &
      emulate mem_6p7b_lowrank_tp4_mb8 configs/6p7b_lowrank.json eager 8 1 3 1 "$N" parallel.tensor=4 parallel.sequence_parallel=false &
      emulate mem_1p3b_lowrank_tp2sp_compiled configs/1p3b_lowrank.json compile 8 4 6 2 parallel.tensor=2 \
          parallel.sequence_parallel=true &
      wait ;;
    memory_compiled)
      emulate mem_1p3b_lowrank_dp4_compiled configs/1p3b_lowrank.json compile 8 4 6 3 &
      emulate mem_6p7b_lowrank_dp4_compiled configs/6p7b_lowrank.json compile 4 4 4 2 "$N" &
      wait ;;
    compute)
      emulate compute_1p3b_dp4 configs/1p3b_lowrank.json compile 8 4 8 4
      compute_tensor_parallel "" ;;
    python_wrapper)
      compute_tensor_parallel _python_wrapper training.cpp_wrapper=false ;;
    regions)
      for case in "tp4sp g1 parallel.tensor=4 parallel.sequence_parallel=true" "tp2 g1 parallel.tensor=2 parallel.sequence_parallel=false" "dp4 g4"; do
        read -r name other overrides <<< "$case"
        # shellcheck disable=SC2086  # the overrides are words without spaces
        VARIANT="$other:training.blocks_per_region=${other#g}" emulate "regions_1p3b_$name" configs/1p3b_lowrank.json \
            compile 8 4 13 3 $overrides
      done ;;
    sp_tp4|sp_tp2)
      tensor=${set#sp_tp}
      emulate "sp_tp${tensor}_1p3b_dp4" configs/1p3b_lowrank.json compile 8 4 8 4
      VARIANT=nosp:parallel.sequence_parallel=false emulate "sp_1p3b_tp$tensor" configs/1p3b_lowrank.json \
          compile 8 4 8 4 parallel.tensor=$tensor ;;
    collectives)
      python3 benchmarks/diagnostics/bench_emulated_collectives.py --out "$out/collectives_host.json" \
          > "$out/collectives_host.txt" 2>&1; echo "== collectives_host (exit $?)"; cat "$out/collectives_host.txt"
      COLLECTIVES=torch emulate collectives_1p3b_tp4sp_torch configs/1p3b_lowrank.json compile 8 4 16 4 parallel.tensor=4
      emulate collectives_1p3b_tp4sp_one_kernel configs/1p3b_lowrank.json compile 8 4 16 4 parallel.tensor=4
      emulate collectives_1p3b_dp4 configs/1p3b_lowrank.json compile 8 4 16 4 ;;
    compute_eager)
      emulate compute_1p3b_dp4_eager configs/1p3b_lowrank.json eager 8 4 8 4
      emulate compute_1p3b_tp2sp_eager configs/1p3b_lowrank.json eager 8 4 8 4 parallel.tensor=2 \
          parallel.sequence_parallel=true ;;
    profile)  # where an emulated TP rank's step goes: bench_scaling.py --profile (kernel table, busy/idle,
              # the host's Python by own time), the compute set's global batch (16 micro-batches at TP4)
      for case in "tp4sp 4 128" "tp4sp_g1 4 128 training.blocks_per_region=1" "tp2 2 128"; do
        read -r name tensor global extra <<< "$case"
        sp=$([ "$name" = tp2 ] && echo false || echo true)
        timeout 200 python3 tools/emulate_rank.py --world 4 -- benchmarks/bench_scaling.py \
            --config configs/1p3b_lowrank.json --override parallel.tensor=$tensor --override parallel.sequence_parallel=$sp \
            --override self_guided.enabled=false --override training.compile=true ${extra:+--override $extra} \
            --override training.micro_batch_size=8 --override training.global_batch_size=$global --steps 3 --warmup 3 --profile-steps 1 \
            --profile "$out/profile_1p3b_$name.txt" --out "$out/profile_1p3b_$name.json" > "$out/profile_1p3b_$name.log" 2>&1
        echo "== profile $name (exit $?): $(grep -E '^per step|^t[0-9]' "$out/profile_1p3b_$name.log" | head -2 | tr '\n' ' ')"
      done ;;
    compute_6p7b)  # as the scale suite's 6p7b set measured for real: micro-batch 2, 128 sequences per step
      emulate compute_6p7b_dp4 configs/6p7b_lowrank.json eager 2 16 5 2 "$N"
      emulate compute_6p7b_tp2pp2sp configs/6p7b_lowrank.json eager 2 16 5 2 "$N" parallel.tensor=2 \
          parallel.pipeline=2 parallel.sequence_parallel=true ;;
    compute_6p7b_compiled)  # TP2 x PP2 SP compiled, 64 micro-batches per step, at micro-batch 4 and 8
      for micro in 4 8; do
        emulate compute_6p7b_tp2pp2sp_compiled_mb$micro configs/6p7b_lowrank.json compile $micro 16 4 2 "$N" \
            parallel.tensor=2 parallel.pipeline=2 parallel.sequence_parallel=true
      done ;;
    compute_last_stage)  # the TP2 x PP2 SP last stage timed alone (compute_6p7b_compiled timed stage 0)
      RANK=2 emulate compute_6p7b_tp2pp2sp_compiled_mb8_stage1 configs/6p7b_lowrank.json compile 8 16 4 2 \
          "$N" parallel.tensor=2 parallel.pipeline=2 parallel.sequence_parallel=true ;;
    last_stages)  # the other end of the pipelines: its head and loss (the planner predicts each stage)
      RANK=2 emulate mem_6p7b_tp2pp2sp_compiled_mb4_stage1 configs/6p7b_lowrank.json compile 4 16 3 1 "$N" \
          parallel.tensor=2 parallel.pipeline=2 parallel.sequence_parallel=true &
      RANK=2 emulate mem_6p7b_tp2pp2sp_compiled_mb8_stage1 configs/6p7b_lowrank.json compile 8 16 3 1 "$N" \
          parallel.tensor=2 parallel.pipeline=2 parallel.sequence_parallel=true &
      RANK=3 emulate mem_6p7b_pp4_mb2_stage3 configs/6p7b_lowrank.json eager 2 16 3 1 "$N" parallel.pipeline=4 &
      RANK=0 emulate mem_6p7b_pp4_mb2_stage0 configs/6p7b_lowrank.json eager 2 16 3 1 "$N" parallel.pipeline=4 &
      wait ;;
    graphs)  # TP with CUDA graphs (the experimental opt-in; collectives move nothing here): how far
             # replaying the blocks takes a host-bound TP rank, each against the same rank compiled alone
      for layout in "tp4sp:parallel.tensor=4;parallel.sequence_parallel=true" \
                    "tp2sp:parallel.tensor=2;parallel.sequence_parallel=true"; do
        name=${layout%%:*}; overrides=(); IFS=';' read -ra kv <<< "${layout#*:}"
        for o in "${kv[@]}"; do overrides+=(--override "$o"); done
        MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS=1 timeout 280 python3 benchmarks/bench_train.py \
            --configs configs/1p3b_lowrank.json --nproc 4 --emulate --modes compile --micro-batch-size 8 \
            --grad-accumulation 4 --steps 8 --warmup 4 "${overrides[@]}" --variant cuda_graphs:training.cuda_graphs=true \
            --keep-logs "$out/logs_graphs_$name" --out "$out/graphs_$name.json" > "$out/graphs_$name.txt" 2>&1
        echo "== graphs $name (exit $?)"; grep -E "emulated rank|FAILED|Error" "$out/graphs_$name.txt" | tail -3
      done ;;
    *) echo "error: unknown set '$set' of suite 'emulated' (memory sp_slope memory_compiled compute python_wrapper" \
            "regions sp_tp4 sp_tp2 collectives compute_eager profile compute_6p7b compute_6p7b_compiled" \
            "compute_last_stage last_stages graphs)" >&2; exit 2 ;;
  esac
done
python3 benchmarks/bench_train.py --table-from "$out"/*.json --out "$out/emulated_all.json" 2>&1 | tail -20
