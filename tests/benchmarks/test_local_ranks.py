"""benchmarks/local_ranks.py: every rank gets its own RANK and the group's rendezvous, a failing
rank's exit code and output come back, and a group past its deadline is killed, not waited on."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
from local_ranks import run_local_ranks  # noqa: E402

SCRIPT = ("import os, sys, time; r = int(os.environ['RANK']); "
          "print('rank', r, 'of', os.environ['WORLD_SIZE'], os.environ['MASTER_PORT']); "
          "time.sleep(float(sys.argv[1]) if r == 1 else 0); sys.exit(int(sys.argv[2]) if r == 1 else 0)")


def test_each_rank_runs_with_its_env_and_a_failure_is_reported():
    done = run_local_ranks([sys.executable, "-c", SCRIPT, "0", "3"], 2, timeout=60)
    assert not done.hung and done.codes == [0, 3] and done.failed
    assert done.outputs[0].startswith("rank 0 of 2") and done.outputs[1].startswith("rank 1 of 2")
    assert done.outputs[0].split()[-1] == done.outputs[1].split()[-1]  # one rendezvous port
    assert "--- rank 1 ---" in done.tails()


def test_a_group_past_its_deadline_is_killed_with_its_output():
    done = run_local_ranks([sys.executable, "-u", "-c", SCRIPT, "60", "0"], 2, timeout=3)
    assert done.hung and done.failed
    assert "rank 1 of 2" in done.outputs[1]
