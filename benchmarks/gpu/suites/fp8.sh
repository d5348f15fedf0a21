# FP8 against bf16 on one GPU (issue 29): its GPU tests, each product's split, the 1.3B and 2.7B steps
# ARGS: CASE [CASE ...] of (default: tests products)
#   tests       tests/unit/test_fp8_gpu.py (each kind's products and gradients against fp32, the bias in
#               _scaled_mm's epilogue); they skip without FP8 tensor cores, -rs says so
#   products    benchmarks/bench_fp8.py, tensorwise and rowwise at TOKENS (default 8192, a step's): each
#               product's fwd+bwd against bf16 and its kernel time split into GEMMs, FP8 scales and
#               casts, other kernels and idle -> OUT/fp8_products.json
#   speed       1.3B lowrank and dense, compiled, micro-batch 8, bf16 then FP8 in one bench_train run
#               beside the plain-PyTorch reference -> OUT/reference_fp8_1p3b.json
#   speed_2p7b  the same at 2.7B, micro-batch MB (default 4) -> OUT/reference_fp8_2p7b.json; both kinds
#               take more than one call: KINDS="dense" (or "lowrank") runs one, -> ..._2p7b_dense.json
#   keep_casts  1.3B dense in bf16, FP8, and FP8 with training.fp8.keep_casts (backward reuses forward's
#               casts: speed and peak memory; no reference; dense alone fits one call)
#               -> OUT/keep_casts_fp8_1p3b.json
#   ledger      the step ledger of dense in FP8, then in bf16 (the reference suite's ledger with
#               LEDGER_CONFIGS, default "dense_fp8 dense"; "dense_fp8keep": FP8 keeping the casts)
#               -> OUT/ledger_*.json
# A case takes one 10-minute call at most (ledger with two configs: about that; give it a call alone).
# SMOKE=1 runs the plumbing on a CPU (MEGATRON_SFFN_FP8_ON_CPU, tiny shapes, eager; products: its dense case).
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(tests products)
for case in "${cases[@]}"; do
  case $case in tests|products|speed|speed_2p7b|keep_casts|ledger) ;;
    *) echo "error: unknown case '$case' of suite 'fp8' (tests products speed speed_2p7b keep_casts ledger)" >&2; exit 2 ;;
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
  if [ "$name" = keep_casts ]; then  # FP8 against FP8 with the casts kept: the reference adds nothing
    args+=(--variant "$fp8_variant" --variant "fp8keep:${fp8_variant#fp8:};training.fp8.keep_casts=true")
    python3 benchmarks/bench_train.py "${args[@]}" --out "$out/keep_casts_fp8_1p3b.json" > "$out/logs/speed_$name.log" 2>&1
    return
  fi
  python3 benchmarks/bench_train.py "${args[@]}" --reference --variant "$fp8_variant" \
      --out "$out/reference_fp8_$name.json" > "$out/logs/speed_$name.log" 2>&1
}

status=0
for case in "${cases[@]}"; do
  echo "== $case $(date +%T)"
  case $case in
    tests)
      python3 -m pytest -q -rs -p no:cacheprovider tests/unit/test_fp8_gpu.py 2>&1 | tee "$out/fp8_gpu_tests.log" \
          | tail -5; [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    products)
      products=(--tokens ${TOKENS:-8192}); [ "$smoke" = 1 ] && products=(--smoke --cases dense)
      python3 benchmarks/bench_fp8.py "${products[@]}" --out "$out/fp8_products.json" 2>&1 \
          | grep -v -i "warn" | tee "$out/logs/products.log"; [ "${PIPESTATUS[0]}" = 0 ] || status=1 ;;
    speed)
      speed 1p3b configs/1p3b_lowrank.json configs/1p3b_dense.json || status=1
      tail -12 "$out/logs/speed_1p3b.log" ;;
    speed_2p7b)
      configs=(); for kind in ${KINDS:-lowrank dense}; do configs+=("configs/2p7b_$kind.json"); done
      name=2p7b; [ -n "${KINDS:-}" ] && name=2p7b_${KINDS// /_}
      MB=${MB:-4} speed "$name" "${configs[@]}" || status=1
      tail -12 "$out/logs/speed_$name.log" ;;
    keep_casts)
      speed keep_casts configs/1p3b_dense.json || status=1
      tail -12 "$out/logs/speed_keep_casts.log" ;;
    ledger)
      LEDGER_CONFIGS=${LEDGER_CONFIGS:-dense_fp8 dense} bash benchmarks/gpu/run.sh reference "$out" ledger || status=1 ;;
  esac
done
exit "$status"
