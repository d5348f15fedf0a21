"""experiments/sweep/scheduler.py: longest first, only what fits before the deadline, one run per
slot at a time; run_pool drives real processes (short Python sleepers standing in for runs)."""
import sys
import time
from types import SimpleNamespace

import pytest

from experiments.sweep import launch, scheduler


def job(name, tokens):
    return SimpleNamespace(name=name, tokens=tokens)


def test_the_estimate_is_startup_plus_tokens_at_the_measured_median_rate():
    est = scheduler.Estimator(tokens_per_s=1000.0, startup_s=10.0)
    assert est(5000) == pytest.approx(15.0)
    est.add([{"status": "ok", "tokens": 4000, "wall_s": 12.0},     # 2000 tokens/s
             {"status": "ok", "tokens": 3000, "wall_s": 11.0},     # 3000
             {"status": "ok", "tokens": 9000, "wall_s": 13.0},     # 3000
             {"status": "failed", "tokens": 1, "wall_s": 100.0}])
    assert est.tokens_per_s == 3000 and est(6000) == pytest.approx(12.0)
    assert scheduler.Estimator()(5000) is None


def test_pick_takes_the_longest_run_that_fits():
    pending = scheduler.longest_first([job("short", 100), job("long", 1000), job("mid", 500)])
    assert [p.name for p in pending] == ["long", "mid", "short"]
    est = scheduler.Estimator(tokens_per_s=10.0, startup_s=0.0)
    assert scheduler.pick(pending, 60.0, est, 20.0).name == "mid"
    assert scheduler.pick(pending, 5.0, est, 20.0) is None
    unknown = scheduler.Estimator()
    assert scheduler.pick(pending, 30.0, unknown, 20.0).name == "long"
    assert scheduler.pick(pending, 10.0, unknown, 20.0) is None


def test_simulate_counts_the_calls_and_refuses_a_run_longer_than_a_call():
    est = scheduler.Estimator(tokens_per_s=1.0, startup_s=0.0)
    plans = [job("a", 90), job("b", 60), job("c", 50), job("d", 40), job("e", 30), job("f", 20)]
    calls = scheduler.simulate(plans, slots=2, call_s=100.0, estimate=est)
    placed = [[name for _, name, _, _ in call] for call in calls]
    assert placed == [["a", "b", "d"], ["c", "e", "f"]]      # b + d share a slot: 60 + 40 = 100
    for call in calls:
        for slot in (0, 1):
            spans = sorted((s, e) for sl, _, s, e in call if sl == slot)
            assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:])) and spans[-1][1] <= 100
    with pytest.raises(ValueError, match="needs ~150 s"):
        scheduler.simulate([job("huge", 150)], 4, 100.0, est)


def test_run_pool_runs_side_by_side_and_stops_at_the_deadline(tmp_path):
    """On two slots with an 8 s deadline: a run estimated at 5 s that sleeps 60 s, three short
    ones and one estimated at 100 s. At most two at once, both slots used, the long sleeper
    stopped at the deadline, the 100 s one never started."""
    sleep = {"long": 60, "a": 0.5, "b": 0.5, "c": 0.5, "never": 0}
    plans = [job("long", 50), job("a", 10), job("b", 10), job("c", 10), job("never", 1000)]
    started, ended = [], {}

    def start(p, slot):
        assert len([n for n, _ in started if n not in ended]) < 2
        started.append((p.name, slot))
        return launch.RunProcess({"name": p.name, "tokens": p.tokens}, str(tmp_path / p.name),
                                 [sys.executable, "-c", f"import time; time.sleep({sleep[p.name]})"],
                                 launch.child_env(smoke=True))

    def finish(p, record):
        ended[p.name] = record

    est = scheduler.Estimator(tokens_per_s=10.0, startup_s=0.0)
    skipped = scheduler.run_pool(plans, ["s0", "s1"], start, finish, est, deadline=time.perf_counter() + 8.0,
                                 grace_s=5.0, poll_s=0.1)
    assert started[0] == ("long", "s0") and {s for _, s in started} == {"s0", "s1"}
    assert {n: r["status"] for n, r in ended.items()} == {"long": "stopped", "a": "ok", "b": "ok", "c": "ok"}
    assert "deadline" in ended["long"]["reason"] and ended["long"]["wall_s"] < 15
    assert list(skipped) == ["never"] and "needs ~" in skipped["never"]
    assert launch.read_record(str(tmp_path / "long"))["status"] == "stopped"


def test_a_sweep_stopped_from_outside_stops_its_runs_and_records_them(tmp_path):
    """SIGTERM to the sweep (as run_sweep.py turns it into SystemExit): its run does not outlive it."""
    import os
    import signal
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run_dir = str(tmp_path / "long")
    script = f"""
import signal, sys
sys.path.insert(0, {root!r})
from types import SimpleNamespace
from experiments.sweep import launch, scheduler
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
def start(plan, slot):
    job = launch.RunProcess({{"name": plan.name}}, {run_dir!r},
                            [sys.executable, "-c", "import time; time.sleep(120)"], launch.child_env(True))
    print(job.proc.pid, flush=True)
    return job
scheduler.run_pool([SimpleNamespace(name="long", tokens=1)], ["s0"], start, lambda p, r: None, scheduler.Estimator())
"""
    sweep = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(sweep.stdout.readline())
    time.sleep(1.0)                              # the pool has registered the run by then
    sweep.send_signal(signal.SIGTERM)
    assert sweep.wait(timeout=60) == 143
    record = launch.read_record(run_dir)
    assert record["status"] == "stopped" and "interrupted" in record["reason"]
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)


def test_a_slot_named_twice_runs_two_at_once(tmp_path):
    """--devices 0 0: two slots on one GPU, so two runs overlap there (the slots are told apart by
    position, not by name), and each started run names the GPU it was given."""
    plans = [job("a", 10), job("b", 10)]
    started, ended = [], {}

    def start(p, slot):
        started.append((p.name, slot, time.perf_counter()))
        return launch.RunProcess({"name": p.name, "tokens": p.tokens}, str(tmp_path / p.name),
                                 [sys.executable, "-c", "import time; time.sleep(1.5)"], launch.child_env(smoke=True))

    def finish(p, record):
        ended[p.name] = (record, time.perf_counter())

    est = scheduler.Estimator(tokens_per_s=10.0, startup_s=0.0)
    assert scheduler.run_pool(plans, ["0", "0"], start, finish, est, poll_s=0.1) == {}
    assert sorted((n, s) for n, s, _ in started) == [("a", "0"), ("b", "0")]
    assert all(r["status"] == "ok" for r, _ in ended.values())
    assert max(t for _, _, t in started) < min(t for _, t in ended.values())  # both began before either ended
