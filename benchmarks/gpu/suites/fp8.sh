# FP8 against bf16 on one GPU (issue 29): its GPU tests, each product's split, the 1.3B and 2.7B steps
# ARGS: CASE [CASE ...] of (default: tests products)
#   quality     1.3B lowrank trained QUALITY_STEPS (500) steps on the bundled corpus in bf16, then in FP8 (same
#               seed, same batches; global batch GBS, default 16 = 2 micro-batches of 8 x 1024 tokens), the
#               curves compared step by step after step 50 (tools/compare_runs.py, 1% tolerance) ->
#               OUT/fp8_quality.json, OUT/metrics_{bf16,fp8}.jsonl; with TESTS_BESIDE=1 the GPU tests run
#               beside it (losses, not speed, are this case's measure); about 7 minutes
#   tests       tests/unit/test_fp8_gpu.py (each kind's products and gradients against fp32, the bias in
#               _scaled_mm's epilogue); they skip without FP8 tensor cores, -rs says so
#   products    benchmarks/bench_fp8.py, tensorwise and rowwise at TOKENS (default 8192, a step's): each
#               product's fwd+bwd against bf16 and its kernel time split into GEMMs, FP8 scales and
#               casts, other kernels and idle -> OUT/fp8_products.json
#   speed       1.3B lowrank and dense, compiled, micro-batch 8, bf16 then FP8 in one bench_train run
#               beside the plain-PyTorch reference -> OUT/reference_fp8_1p3b.json
#   speed_2p7b  the same at 2.7B, micro-batch MB (default 4) -> OUT/reference_fp8_2p7b.json
#   ledger      the step ledger of dense in FP8, then in bf16 (the reference suite's ledger with
#               LEDGER_CONFIGS, default "dense_fp8 dense") -> OUT/ledger_*.json
# A case takes one 10-minute call at most (ledger with two configs: about that; give it a call alone).
# SMOKE=1 runs the plumbing on a CPU (MEGATRON_SFFN_FP8_ON_CPU, tiny shapes, eager; products: its dense case).
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(tests products)
for case in "${cases[@]}"; do
  case $case in tests|products|speed|speed_2p7b|ledger|quality) ;;
    *) echo "error: unknown case '$case' of suite 'fp8' (tests products speed speed_2p7b ledger quality)" >&2; exit 2 ;;
  esac
done
mkdir -p "$out/logs"
fp8_variant='fp8:training.fp8.enabled=true'
smoke=0
if [ "${SMOKE:-0}" = 1 ]; then  # the smoke model trains in fp32; FP8 takes bf16 activations
  smoke=1; export MEGATRON_SFFN_FP8_ON_CPU=1; fp8_variant="$fp8_variant;training.precision=bf16"
fi

speed() {  # NAME CONFIG... : bf16 and FP8 of each config beside the reference
  local name=$1; shift
  local args=(--configs "$@" --modes compile --micro-batch-size "${MB:-8}" --steps 20 --warmup 10)
  [ "$smoke" = 1 ] && args=(--configs "$@" --smoke --modes eager --steps 4 --warmup 1)
  python3 benchmarks/bench_train.py "${args[@]}" --reference --variant "$fp8_variant" \
      --out "$out/reference_fp8_$name.json" > "$out/logs/speed_$name.log" 2>&1
}

gpu_tests() {
  python3 -m pytest -q -rs -p no:cacheprovider tests/unit/test_fp8_gpu.py > "$out/fp8_gpu_tests.log" 2>&1
}

quality() {  # bf16 then FP8 from the same seed and batches; their loss curves compared
  local runs=${QUALITY_RUNS:-/tmp/fp8_quality} args=(--config configs/1p3b_lowrank.json --data-path embedded
      --override data.tokenizer_model=embedded
      --train-steps "${QUALITY_STEPS:-500}" --global-batch-size "${GBS:-16}" --log-interval 50
      --eval-interval 100000 --no-save)
  [ "$smoke" = 1 ] && args=(--config configs/tiny_demo.json --data-path embedded --no-compile
      --train-steps "${QUALITY_STEPS:-6}" --global-batch-size 8 --micro-batch-size 4 --log-interval 2
      --eval-interval 100000 --no-save --override model.seq_length=64 --precision bf16
      --override training.fp8.layers=all --override self_guided.enabled=false)
  rm -rf "$runs"; mkdir -p "$runs"
  local precision
  for precision in bf16 fp8; do
    local flag=--no-fp8; [ "$precision" = fp8 ] && flag=--fp8
    python3 launchers/pretrain.py "${args[@]}" $flag --run-dir "$runs/$precision" > "$out/logs/quality_$precision.log" 2>&1 \
        || { echo "quality: the $precision run failed: $out/logs/quality_$precision.log"; tail -5 "$out/logs/quality_$precision.log"; return 1; }
    cp "$runs/$precision/metrics.jsonl" "$out/metrics_$precision.jsonl"
  done
  local after=50; [ "$smoke" = 1 ] && after=0
  python3 tools/compare_runs.py "$runs/bf16" "$runs/fp8" --after "$after" --tolerance 0.01 --names bf16 fp8 \
      --out "$out/fp8_quality.json"
}

status=0
for case in "${cases[@]}"; do
  echo "== $case $(date +%T)"
  case $case in
    tests)
      gpu_tests || status=1; tail -5 "$out/fp8_gpu_tests.log" ;;
    quality)
      beside=""
      if [ "${TESTS_BESIDE:-0}" = 1 ]; then gpu_tests & beside=$!; fi
      quality || status=1
      if [ -n "$beside" ]; then
        wait "$beside" || status=1; echo "-- GPU tests (beside):"; tail -5 "$out/fp8_gpu_tests.log"
      fi ;;
    products)
      products=(--tokens ${TOKENS:-8192}); [ "$smoke" = 1 ] && products=(--smoke --cases dense)
      python3 benchmarks/bench_fp8.py "${products[@]}" --out "$out/fp8_products.json" 2>&1 \
          | grep -v -i "warn" | tee "$out/logs/products.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    speed)
      speed 1p3b configs/1p3b_lowrank.json configs/1p3b_dense.json || status=1
      tail -12 "$out/logs/speed_1p3b.log" ;;
    speed_2p7b)
      MB=${MB:-4} speed 2p7b configs/2p7b_lowrank.json configs/2p7b_dense.json || status=1
      tail -12 "$out/logs/speed_2p7b.log" ;;
    ledger)
      LEDGER_CONFIGS=${LEDGER_CONFIGS:-dense_fp8 dense} bash benchmarks/gpu/run.sh reference "$out" ledger || status=1 ;;
  esac
done
exit "$status"
