# decoding on one GPU: CUDA graphs against eager (with their GPU tests), and pre-merge's crossover
# ARGS: CASE [CASE ...] of (default: graphs)
#   graphs    the graph-vs-eager tests (tests/unit/test_cuda_graph.py; their GPU cases skip without
#             CUDA), benchmarks/bench_decode.py for CONFIG (eager vs CUDA graphs, pre-merge off/on, 1 and
#             16 prompts, 64 new tokens, bf16, seeded weights) and one tools/generate.py --cuda-graphs
#             run; the benchmark runs even when the tests fail or pytest is missing, the exit status says so
#   premerge  tools/generate.py --calibrate for CONFIG's structured FFNs (the crossover), then greedy
#             generation with the factors only (off) and with the dispatcher (auto), 1 and 16 prompts
# CONFIG: default configs/1p3b_lowrank.json.
config=${CONFIG:-configs/1p3b_lowrank.json}
prompts=(); for i in $(seq 16); do prompts+=(--prompt "Chapter $i. The history of the"); done
cases=("$@"); [ ${#cases[@]} -eq 0 ] && cases=(graphs)
status=0
for case in "${cases[@]}"; do
  echo "== $case $(date +%T)"
  case $case in
    graphs)
      python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import platform, torch
print(f"python {platform.python_version()} | torch {torch.__version__} | CUDA {torch.version.cuda} | "
      f"device {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
for name in ("triton", "pytest"):
    try:
        print(name, __import__(name).__version__)
    except Exception as e:
        print(f"{name}: not importable ({e})")
PY
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/versions.txt" || true
      if ! python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "error: torch sees no CUDA device: the GPU tests would skip and CUDA graphs cannot be measured" >&2
        exit 2
      fi
      if python3 -c "import pytest" 2>/dev/null; then
        python3 -m pytest -q -rs -p no:cacheprovider tests/unit/test_cuda_graph.py 2>&1 | tee "$out/gpu_tests.log" \
          || status=$?
      else
        echo "error: pytest is not importable here: tests not run (carry pytest's wheels in .whl)" | tee "$out/gpu_tests.log"
        status=3
      fi
      python3 benchmarks/bench_decode.py --config "$config" --batch 1 16 --new-tokens 64 \
          --out "$out/bench_decode.json" 2>&1 | tee "$out/bench_decode.log"
      python3 tools/generate.py --config "$config" --tokenizer-model embedded --pre-merge on --cuda-graphs \
          --max-new-tokens 64 --temperature 0 "${prompts[@]}" --json "$out/generate_graphs_16.json" 2>&1 | tail -1
      echo "tests exit status: $status" ;;
    premerge)
      python3 tools/generate.py --config "$config" --calibrate --calibration-file "$out/premerge.json" \
          --json "$out/calibration.json" 2>&1 | grep -v "^\[20\|Warning"
      for pm in off auto; do
        for n in 1 16; do
          echo "pre-merge $pm, $n prompt(s):"
          python3 tools/generate.py --config "$config" --tokenizer-model embedded --calibration-file "$out/premerge.json" \
              --pre-merge "$pm" --max-new-tokens 64 --temperature 0 "${prompts[@]:0:$((2 * n))}" \
              --json "$out/generate_${pm}_$n.json" 2>&1 | tail -1
        done
      done ;;
    *) echo "error: unknown case '$case' of suite 'decode' (graphs premerge)" >&2; exit 2 ;;
  esac
done
exit "$status"
