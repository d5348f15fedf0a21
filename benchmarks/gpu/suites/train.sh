# 1.3B training on one GPU: the optimizer implementations, CUDA graphs, where a step goes, resuming
# ARGS: CASE [CASE ...] of
#   optimizers   the config as it is ('base': optimizer auto = fused, ZeRO 1) against DeepSpeed's bf16
#                optimizer (ZeRO 1) and fused with ZeRO 0; compiled blocks, micro-batch 8, 25 steps
#                (STEPS); CONFIG (default configs/1p3b_lowrank.json); about 5 minutes
#   cuda_graphs  the default compiled path against the same with training.cuda_graphs (every compiled
#                block's forward and backward replayed as CUDA graphs) at a GPU-bound micro-batch 8 x 2
#                and a host-bound 2 x 4, 20 steps, both runs' step logs kept (losses compared step by
#                step); CONFIG; about 5 minutes on an H200
#   profile      bench_scaling.py --profile (fused optimizer, ZeRO 0, micro-batch 8): lowrank and dense
#                compiled and lowrank eager, each a kernel table + busy/idle summary (TXT and JSON), then
#                lowrank compiled at micro-batch 16, timed only
#   profile_x4   the four profile cases side by side, one per GPU of a 4-GPU host
#   fp8          FP8 against bf16: the GPU numerics tests (tests/unit/test_fp8_gpu.py), then 1.3B dense and
#                lowrank end to end (bench_train.py --variant fp8, compiled, micro-batch 8, 20 steps) beside
#                the reference; CONFIGS overrides the configs (e.g. "configs/2p7b_dense.json", MICRO=4);
#                about 9 minutes
#   compile_tests the compiled blocks' GPU tests (tests/unit/test_compile_kinds.py: Inductor's C++
#                wrapper on CUDA, forward and backward, against eager; their CUDA cases skip on a CPU);
#                about a minute
#   fp8_products each product's fwd+bwd in bf16 and FP8 (bench_fp8.py, 8192 tokens, tensorwise): the
#                crossovers of megatron_sffn/fp8/dispatch.py; about 3 minutes
#   resume TAG [pretrain.py args ...]   train for N steps, resume from the checkpoint TAG, compare the
#                two loss curves step by step (NPROC=n: n GPUs); the rest of the line is its arguments,
#                e.g. resume step00000100 --config configs/1p3b_lowrank_sgt.json --train-steps 140
#                --save-interval 100 --data-path embedded
# The optimizer machinery alone: python3 benchmarks/bench_optimizer.py --config CONFIG --out OUT/opt.json
config=${CONFIG:-configs/1p3b_lowrank.json}

profile_case() {  # GPU NAME KIND MICRO COMPILE [PROFILE]; GPU "" = as visible
  local gpu=$1 name=$2 kind=$3 micro=$4 compile=$5 profile=${6:-}
  CUDA_VISIBLE_DEVICES=${gpu:-${CUDA_VISIBLE_DEVICES:-}} python3 benchmarks/bench_scaling.py \
      --config "configs/1p3b_$kind.json" --override training.micro_batch_size="$micro" \
      --override training.global_batch_size="$micro" --override training.compile="$compile" \
      --override self_guided.enabled=false --override 'optimizer.implementation="fused"' \
      --override parallel.zero_stage=0 --steps 10 --warmup 5 --out "$out/scal_$name.json" \
      ${profile:+--profile "$out/profile_$name.txt"} > "$out/$name.log" 2>&1
  echo "$name: exit $?"; grep -v "Warning\|warn(\|^\[20" "$out/$name.log" | tail -5
}

resume_check() {  # TAG [pretrain.py args ...]
  local tag=$1; shift
  local run=$out/run
  launch() { if [ "${NPROC:-1}" -gt 1 ]; then deepspeed --num_gpus "$NPROC" launchers/pretrain.py "$@"; \
             else python3 launchers/pretrain.py "$@"; fi; }
  launch "$@" --run-dir "$run" 2>&1 | grep -v "^\[20" | tee "$out/uninterrupted.log"
  cp "$run/metrics.jsonl" "$out/metrics_uninterrupted.jsonl"
  echo "$tag" > "$run/checkpoints/latest"          # as if the run had stopped right after $tag
  launch "$@" --run-dir "$run" 2>&1 | grep -v "^\[20" | tee "$out/resumed.log"
  cp "$run/metrics.jsonl" "$out/metrics_resumed.jsonl"
  # the steps after the checkpoint, the resumed curve against the uninterrupted one
  python3 tools/compare_runs.py "$out/metrics_uninterrupted.jsonl" "$out/metrics_resumed.jsonl" \
      --after "$((10#${tag//[!0-9]/}))" --names uninterrupted resumed --out "$out/resume_compare.json"
}

[ $# -ge 1 ] || { echo "error: suite 'train' needs a case: optimizers cuda_graphs profile profile_x4 fp8 compile_tests fp8_products resume" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case=$1; shift
  echo "== $case $(date +%T)"
  case $case in
    optimizers)
      python3 benchmarks/bench_train.py --configs "$config" --modes compile --micro-batch-size 8 \
          --steps "${STEPS:-25}" --warmup 10 \
          --variant 'deepspeed:optimizer.implementation="deepspeed"' \
          --variant 'fused0:optimizer.implementation="fused";parallel.zero_stage=0' \
          --out "$out/bench_train_fused_$(basename "$config" .json).json" 2>&1 | grep -v "^\[20\|Warning\|warn(" ;;
    cuda_graphs)
      for micro_accum in "8 2" "2 4"; do
        read -r micro accum <<< "$micro_accum"
        python3 benchmarks/bench_train.py --configs "$config" --nproc 1 --modes compile --micro-batch-size "$micro" \
            --grad-accumulation "$accum" --steps 20 --warmup 10 --variant "cuda_graphs:training.cuda_graphs=true" \
            --keep-logs "$out/logs_mb$micro" --out "$out/cuda_graphs_mb$micro.json" 2>&1 | grep -v "^\[20" | tail -6
      done ;;
    profile)
      profile_case "" lowrank_compiled lowrank 8 true p
      profile_case "" dense_compiled dense 8 true p
      profile_case "" lowrank_eager lowrank 8 false p
      profile_case "" lowrank_compiled_mb16 lowrank 16 true ;;
    profile_x4)
      profile_case 0 lowrank_compiled lowrank 8 true p &
      profile_case 1 dense_compiled dense 8 true p &
      profile_case 2 lowrank_eager lowrank 8 false p &
      profile_case 3 lowrank_compiled_mb16 lowrank 16 true &
      wait ;;
    fp8)
      python3 -m pytest -q -p no:cacheprovider tests/unit/test_fp8_gpu.py 2>&1 | tail -3
      python3 benchmarks/bench_train.py --configs ${CONFIGS:-configs/1p3b_dense.json configs/1p3b_lowrank.json} \
          --modes compile --micro-batch-size "${MICRO:-8}" --steps 20 --warmup 10 --reference \
          --variant 'fp8:training.fp8.enabled=true' --out "$out/reference_fp8.json" 2>&1 | grep -v "^\[20\|Warning\|warn(" ;;
    compile_tests)
      python3 -m pytest -q -rs -p no:cacheprovider tests/unit/test_compile_kinds.py 2>&1 | tail -4 ;;
    fp8_products)
      python3 benchmarks/bench_fp8.py --tokens 8192 --recipes tensorwise --repeats 20 --out "$out/fp8_products.json" \
          2>&1 | grep -v "^\[20\|Warning\|warn(" ;;
    resume)
      [ $# -ge 1 ] || { echo "error: case 'resume' needs a checkpoint tag: resume TAG [pretrain.py args ...]" >&2; exit 2; }
      ( set -e; resume_check "$@" ); set -- ;;
    *) echo "error: unknown case '$case' of suite 'train' (optimizers cuda_graphs profile profile_x4 fp8 compile_tests fp8_products resume)" >&2
       exit 2 ;;
  esac
done
