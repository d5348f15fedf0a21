"""experiments/sweep/run_sweep.py, the command: failures recorded, deadlines, the call plan, and in
--smoke mode (real launcher runs on CPU) four runs side by side, stopped at a deadline and resumed
by a later call from the tarball the first one wrote, into results.md / .json / .png."""
import json
import os
import sys

import pytest

from experiments.sweep import launch, run_sweep


@pytest.fixture
def quiet_env(monkeypatch):
    monkeypatch.setattr(run_sweep, "environment", lambda smoke: {"device": "test"})


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch, quiet_env):
    calls = []

    def failing(launcher, args):
        calls.append(args)
        return [sys.executable, "-c", "import sys; print('something broke'); sys.exit(3)"]

    monkeypatch.setattr(launch, "launch_command", failing)
    rc = run_sweep.main(["--smoke", "--only", "dense", "lowrank_32", "--out-dir", str(tmp_path),
                         "--runs-dir", str(tmp_path / "runs")])
    assert rc == 1 and len(calls) == 2                    # the second run started after the first failed
    report = json.load(open(tmp_path / "results.json"))
    assert [(r["name"], r["status"]) for r in report["runs"]] == [("dense", "failed"), ("lowrank_32", "failed")]
    assert "something broke" in report["runs"][0]["log_tail"]
    assert "| dense |" in open(tmp_path / "results.md").read()


def test_runs_that_cannot_fit_the_deadline_are_not_started(tmp_path, quiet_env):
    rc = run_sweep.main(["--smoke", "--only", "dense", "--deadline-minutes", "0.001", "--out-dir", str(tmp_path),
                         "--runs-dir", str(tmp_path / "runs")])
    assert rc == 3                                        # runs left for another call
    (row,) = json.load(open(tmp_path / "results.json"))["runs"]
    assert row["status"] == "not run" and "deadline" in row["reason"]


def test_without_matplotlib_the_sweep_stops_before_any_run_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    monkeypatch.setattr(launch, "RunProcess", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as stop:
        run_sweep.main(["--smoke", "--only", "dense", "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "r")])
    message = str(stop.value)
    assert message.startswith("error:") and "\n" not in message and 'pip install -e ".[plots]"' in message
    assert not os.path.exists(tmp_path / "results.md")


def test_dry_run_plans_the_full_sweep_in_two_calls_of_four_gpus(tmp_path, capsys):
    assert run_sweep.main(["--dry-run", "--devices", "0", "1", "2", "3", "--deadline-minutes", "9",
                           "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("20 runs, 4 slot(s), 520 s of runs per call, 600,000 tokens/s") and "2 call(s)" in out
    call1 = out.split("call 2:")[0]
    for long_run in ("dense_x4", "lowrank_32_x4", "lowrank_32_sgt_x4"):      # the long runs start first
        assert f"{long_run:<28}     0 -" in call1


def _records(runs_dir):
    return {name: launch.read_record(os.path.join(runs_dir, name)) for name in os.listdir(runs_dir)
            if launch.read_record(os.path.join(runs_dir, name))}


@pytest.mark.slow
def test_smoke_sweep_in_parallel_stopped_and_resumed_by_a_later_call(tmp_path):
    names = ["dense", "dense_seed1235", "lowrank_32", "lowrank_32_sgt", "dense_x4"]
    first, second, third = (str(tmp_path / d) for d in ("call1", "call2", "call3"))
    common = ["--smoke", "--parallel", "4", "--only", *names]
    # an earlier call finished dense
    assert run_sweep.main(common[:4] + ["dense", "--runs-dir", first, "--out-dir", first]) == 0
    dense_started = launch.read_record(os.path.join(first, "dense"))["started"]
    # call 1: dense skipped, four runs side by side; those still running at the 7 s deadline stop
    rc = run_sweep.main(common + ["--runs-dir", first, "--out-dir", first, "--deadline-minutes", "0.12",
                                  "--min-start-s", "1", "--bundle", os.path.join(first, "out.tar.gz")])
    assert rc == 3
    rec1 = _records(first)
    assert rec1["dense"]["started"] == dense_started and rec1["dense"]["status"] == "ok"
    assert rec1["dense_x4"]["status"] == "stopped" and "deadline" in rec1["dense_x4"]["reason"]
    assert {r["slot"] for n, r in rec1.items() if n != "dense"} == {"cpu0", "cpu1", "cpu2", "cpu3"}
    assert all(r["status"] in ("ok", "stopped") for r in rec1.values())
    ran1 = sorted((r["started"], r["ended"]) for n, r in rec1.items() if n != "dense")
    assert max(sum(s <= t < e for s, e in ran1) for t, _ in ran1) >= 2                  # side by side
    # call 2, on a bare machine: the tarball of call 1 carries the finished runs in
    rc = run_sweep.main(common + ["--runs-dir", second, "--out-dir", second, "--runs-tar",
                                  os.path.join(first, "out.tar.gz"), "--bundle", os.path.join(second, "out.tar.gz")])
    assert rc == 0
    rec2 = _records(second)
    assert set(rec2) == set(names) and all(r["status"] == "ok" for r in rec2.values())
    for name, r in rec1.items():
        assert (rec2[name]["started"] == r["started"]) == (r["status"] == "ok"), name   # reran only what stopped
    spans = sorted((r["started"], r["ended"]) for n, r in rec2.items() if rec1[n]["status"] != "ok")
    if len(spans) >= 2:      # on a fast machine only dense_x4 was still running at call 1's deadline
        assert max(sum(s <= t < e for s, e in spans) for t, _ in spans) >= 2            # side by side
    report = json.load(open(os.path.join(second, "results.json")))
    rows = {r["name"]: r for r in report["runs"]}
    assert rows["dense_x4"]["tokens"] == 4 * rows["dense"]["tokens"]
    assert rows["dense"]["val_loss"] != rows["dense_seed1235"]["val_loss"]
    assert abs(rows["lowrank_32_sgt"]["train_flops"] / rows["dense"]["train_flops"] - 1) < 0.05
    (dense,) = [s for s in report["settings_table"] if s["setting"] == "dense" and s["budget"] == "x1"]
    assert dense["spread"] == pytest.approx(abs(rows["dense"]["val_loss"] - rows["dense_seed1235"]["val_loss"]))
    assert [e["verdict"] for e in report["expectations"]][0] == "not measured"     # no 63% runs here
    md = open(os.path.join(second, "results.md")).read()
    assert "## Seed spread" in md and "| x1 | dense | 1234, 1235 |" in md and "(assumed)" in md
    assert os.path.getsize(os.path.join(second, "results.png")) > 10_000
    # the report, redrawn elsewhere from the tarball alone, has the same tables
    assert run_sweep.main(common + ["--report-only", "--runs-dir", third, "--out-dir", third, "--runs-tar",
                                    os.path.join(second, "out.tar.gz")]) == 0
    table = lambda path: [ln for ln in open(path).read().splitlines() if ln.startswith("| ")]   # noqa: E731
    assert table(os.path.join(third, "results.md")) == table(os.path.join(second, "results.md"))


@pytest.mark.parametrize("slots, expected", [(["--devices", "3", "5"], {"3", "5"}), (["--parallel", "2"], {"7"})])
def test_each_gpu_run_sees_only_its_own_device(tmp_path, monkeypatch, quiet_env, slots, expected):
    """--devices pins one GPU per run; --parallel only counts slots (the environment's GPUs stay)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({
        "prefix": str(data / "large_trainvalid_text_document"), "tokenizer": str(data / "t.model"),
        "data_split": "303387,2955,0", "train_tokens": 65_746_466, "valid_tokens": 537_963,
        "train_documents": 303387, "valid_documents": 2955}))
    show = ("import os, time; time.sleep(1); "
            "print('GPU', os.environ['CUDA_VISIBLE_DEVICES'], os.environ['OMP_NUM_THREADS'])")
    monkeypatch.setattr(launch, "launch_command", lambda launcher, args: [sys.executable, "-c", show])
    run_sweep.main(slots + ["--only", "dense", "lowrank_32", "--data-dir", str(data), "--out-dir", str(tmp_path),
                            "--runs-dir", str(tmp_path / "runs")])
    seen = [open(tmp_path / "runs" / n / "train.log").read().split() for n in ("dense", "lowrank_32")]
    assert {s[1] for s in seen} == expected
    assert all(int(s[2]) == max(1, (os.cpu_count() or 1) // 2) for s in seen)
