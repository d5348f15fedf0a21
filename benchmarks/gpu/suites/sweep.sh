# the learning sweep of docs/sweep.md (experiments/sweep/) on one 4-GPU host, one run per GPU
# ARGS: none, or fp8 (below). Four runs side by side, one per GPU, longest first, each started only when its
# estimated time fits before the call's deadline. One call of the device tool runs this suite once;
# repeat it until it prints "all runs finished". Each call carries in the previous call's results
# (.sweep_results/sweep_runs.tar.gz: the runs' logs, no checkpoints) and skips the runs finished
# there; a run stopped at the deadline starts again from step 0.
#   carry: .whl .sweep_carry .sweep_results          timeout: 600 s
#   benchmarks/gpu/run.sh sweep "$OUT"
#   SWEEP_DEVICES="0 1 2" leaves GPU 3 free for another job in the same call; a GPU named twice ("0 0")
#   runs two at once (each slower than the plan assumes: a run past the deadline restarts next call).
# Between calls, here:  mkdir -p .sweep_results && cp <files_at>/sweep_runs.tar.gz .sweep_results/
# Per call: ~10 s installing wheels, ~15 s unpacking the corpus, runs until DEADLINE_MINUTES (9)
# after that, at most 20 s stopping late runs, a few seconds for the report and the tarball:
# under 9.7 minutes. The full sweep (20 runs, 3,355 GPU-s at the H100's 600k tokens/s per run)
# takes 2 calls (3 if a GPU is 10% slower): `python3 experiments/sweep/run_sweep.py --dry-run
# --devices 0 1 2 3 --deadline-minutes 9` prints the plan for what is left.
# `fp8` (the only ARG): FP8's quality check instead (issue 29): the three seeds of dense and of
# lowrank_32 with training.fp8.enabled and training.fp8.layers=all (at d512 "auto" keeps every
# layer bf16), in runs/sweep_fp8, bundled as sweep_fp8_runs.tar.gz: their final validation
# losses against the bf16 seeds' in docs/results.md (this report: docs/results_fp8/). 6 runs: 1 call on 4 GPUs,
# 1 on one H100 (SWEEP_DEVICES=0: 530 s, 2026-12-08).
name=sweep_runs; extra=()
case "${1:-}" in
  "") ;;
  fp8) name=sweep_fp8_runs
       extra=(--only dense dense_seed1235 dense_seed1236 lowrank_32 lowrank_32_seed1235 lowrank_32_seed1236
              --override training.fp8.enabled=true --override training.fp8.layers=all --runs-dir runs/sweep_fp8) ;;
  *) echo "error: suite 'sweep' takes nothing or 'fp8' after OUT (got: $*)" >&2; exit 2 ;;
esac
python3 experiments/sweep/run_sweep.py --carry .sweep_carry --devices ${SWEEP_DEVICES:-0 1 2 3} \
    --deadline-minutes "${DEADLINE_MINUTES:-9}" --runs-tar ".sweep_results/$name.tar.gz" \
    --bundle "$out/$name.tar.gz" --out-dir "$out" "${extra[@]}" 2>&1 | grep -v "^\[20" | tee "$out/sweep.log"
rc=${PIPESTATUS[0]}
case $rc in
  0) echo "all runs finished: here, python experiments/sweep/run_sweep.py --report-only --runs-tar .sweep_results/$name.tar.gz${extra:+ ${extra[*]} --out-dir docs/results_fp8}" ;;
  3) echo "runs left: copy $name.tar.gz into .sweep_results/ and run this suite again" ;;
  *) echo "a run failed (exit code $rc): see $out/sweep.log" ;;
esac
exit $rc
