# the learning sweep of docs/sweep.md (experiments/sweep/) on one 4-GPU host, one run per GPU
# ARGS: none. Four runs side by side, one per GPU, longest first, each started only when its
# estimated time fits before the call's deadline. One call of the device tool runs this suite once;
# repeat it until it prints "all runs finished". Each call carries in the previous call's results
# (.sweep_results/sweep_runs.tar.gz: the runs' logs, no checkpoints) and skips the runs finished
# there; a run stopped at the deadline starts again from step 0.
#   carry: .whl .sweep_carry .sweep_results          timeout: 600 s
#   benchmarks/gpu/run.sh sweep "$OUT"
#   SWEEP_DEVICES="0 1 2" leaves GPU 3 free for another job in the same call.
# Between calls, here:  mkdir -p .sweep_results && cp <files_at>/sweep_runs.tar.gz .sweep_results/
# Per call: ~10 s installing wheels, ~15 s unpacking the corpus, runs until DEADLINE_MINUTES (9)
# after that, at most 20 s stopping late runs, a few seconds for the report and the tarball:
# under 9.7 minutes. The full sweep (20 runs, 3,355 GPU-s at the H100's 600k tokens/s per run)
# takes 2 calls (3 if a GPU is 10% slower): `python3 experiments/sweep/run_sweep.py --dry-run
# --devices 0 1 2 3 --deadline-minutes 9` prints the plan for what is left.
[ $# -eq 0 ] || { echo "error: suite 'sweep' takes no arguments after OUT (got: $*)" >&2; exit 2; }
python3 experiments/sweep/run_sweep.py --carry .sweep_carry --devices ${SWEEP_DEVICES:-0 1 2 3} \
    --deadline-minutes "${DEADLINE_MINUTES:-9}" --runs-tar .sweep_results/sweep_runs.tar.gz \
    --bundle "$out/sweep_runs.tar.gz" --out-dir "$out" 2>&1 | grep -v "^\[20" | tee "$out/sweep.log"
rc=${PIPESTATUS[0]}
case $rc in
  0) echo "all runs finished: here, python experiments/sweep/run_sweep.py --report-only --runs-tar .sweep_results/sweep_runs.tar.gz" ;;
  3) echo "runs left: copy sweep_runs.tar.gz into .sweep_results/ and run this suite again" ;;
  *) echo "a run failed (exit code $rc): see $out/sweep.log" ;;
esac
exit $rc
