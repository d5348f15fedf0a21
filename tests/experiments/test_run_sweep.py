"""experiments/sweep/run_sweep.py: the sweep's configs, its FLOP bookkeeping, and the whole command in
--smoke mode (real launcher runs on CPU) writing results.md / .json / .png."""
import json
import math
import os
import sys

import pytest

from megatron_sffn.config import load_config
from megatron_sffn.model.accounting import dense_equivalent, model_stats, plan_self_guided
from experiments.sweep import run_sweep, sweep_report


def _config(name, overrides=()):
    return load_config(os.path.join(run_sweep.CONFIG_DIR, f"sweep_{name}.json"), list(overrides))


@pytest.mark.parametrize("run", run_sweep.SWEEP, ids=lambda r: r.name)
def test_configs_have_the_papers_structures_and_recipe(run):
    cfg = _config(run.name)
    share = sweep_report.ffn_shares(cfg)["structured_percent"]
    expected = {None: (100, 100), 32: (29, 32), 63: (58, 63)}[run.share]
    assert expected[0] <= round(share) <= expected[1]
    m, t, o = cfg.model, cfg.training, cfg.optimizer
    assert (m.hidden_size, m.num_layers, m.ffn_hidden_size, m.seq_length) == (512, 8, 2048, 1024)
    assert (m.norm, m.activation, m.bias, m.tie_embeddings) == ("layernorm", "gelu", True, True)
    assert (t.seed, t.global_batch_size, t.precision) == (1234, 64, "bf16")   # same data order everywhere
    assert (o.warmup_fraction, o.min_lr_ratio) == (0.1, 0.1)
    assert cfg.self_guided.enabled == run.guided == cfg.self_guided.same_flops


def test_same_flops_runs_spend_the_dense_runs_flops():
    dense = _config("dense")
    per_step = dense.training.global_batch_size * dense.model.seq_length
    n = 192
    budget = n * per_step * model_stats(dense.model).train_flops_per_token
    flops_run = _config("lowrank_32_flops")
    m = run_sweep.steps_for(run_sweep.BY_NAME["lowrank_32_flops"], flops_run, n)
    assert m > n
    assert abs(m * per_step * model_stats(flops_run.model).train_flops_per_token / budget - 1) < 0.01
    sgt = _config("lowrank_32_sgt", ["training.train_tokens=null", f"training.train_steps={n}"])
    plan = plan_self_guided(sgt, n)
    assert plan.guided_steps > 0 and plan.total_steps == n + plan.guided_steps
    assert 0.97 < plan.total_flops / budget <= 1.0
    assert model_stats(dense_equivalent(sgt.model)).train_flops_per_token == model_stats(dense.model).train_flops_per_token
    # the report's step-by-step count (guide cost a per step) agrees with the plan's mean-a estimate
    assert abs(sweep_report.cumulative_flops(sgt, plan.total_steps)[-1] / plan.total_flops - 1) < 0.01


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    calls = []

    def failing(launcher, args):
        calls.append(args)
        return [sys.executable, "-c", "import sys; print('something broke'); sys.exit(3)"]

    monkeypatch.setattr(run_sweep, "launch_command", failing)
    monkeypatch.setattr(run_sweep, "environment", lambda smoke: {"device": "test"})
    rc = run_sweep.main(["--smoke", "--only", "dense", "lowrank_32", "--out-dir", str(tmp_path),
                         "--runs-dir", str(tmp_path / "runs")])
    assert rc == 1 and len(calls) == 2                    # the second run started after the first failed
    report = json.load(open(tmp_path / "results.json"))
    assert [(r["name"], r["status"]) for r in report["runs"]] == [("dense", "failed"), ("lowrank_32", "failed")]
    assert "something broke" in report["runs"][0]["log_tail"]
    assert "| dense |" in open(tmp_path / "results.md").read()


def test_runs_that_cannot_fit_the_deadline_are_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(run_sweep, "environment", lambda smoke: {"device": "test"})
    rc = run_sweep.main(["--smoke", "--only", "dense", "--deadline-minutes", "0.001", "--out-dir", str(tmp_path),
                         "--runs-dir", str(tmp_path / "runs")])
    assert rc == 1
    (row,) = json.load(open(tmp_path / "results.json"))["runs"]
    assert row["status"] == "not run" and "deadline" in row["reason"]


@pytest.mark.slow
def test_smoke_sweep_writes_the_report(tmp_path):
    names = ["dense", "lowrank_32", "lowrank_32_sgt"]
    args = ["--smoke", "--only", *names, "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "runs")]
    assert run_sweep.main(args) == 0
    report = json.load(open(tmp_path / "results.json"))
    rows = {r["name"]: r for r in report["runs"]}
    assert list(rows) == names
    for row in rows.values():
        assert row["status"] == "ok" and math.isfinite(row["val_loss"]) and row["val_ppl"] > 1
        assert row["val_curve"] and row["train_curve"] and row["tokens_per_s"] > 0
        assert row["val_curve"][-1][0] == row["steps"]
        assert not os.path.exists(tmp_path / "runs" / row["name"] / "checkpoints")
    assert rows["dense"]["tokens"] == rows["lowrank_32"]["tokens"] < rows["lowrank_32_sgt"]["tokens"]
    assert rows["lowrank_32"]["train_flops"] < rows["dense"]["train_flops"]
    assert abs(rows["lowrank_32_sgt"]["train_flops"] / rows["dense"]["train_flops"] - 1) < 0.05
    assert len(report["expectations"]) == 3
    md = open(tmp_path / "results.md").read()
    for name in names:
        assert f"| {name} |" in md
    assert "![validation loss" in md and os.path.getsize(tmp_path / "results.png") > 10_000
    # --report-only re-reads the same runs into the same table
    os.rename(tmp_path / "results.md", tmp_path / "first.md")
    assert run_sweep.main(args + ["--report-only"]) == 0
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table == [line for line in open(tmp_path / "results.md").read().splitlines() if line.startswith("| ")]


def test_sweep_configs_are_in_sync_with_their_generator(tmp_path):
    run_sweep.write_configs(str(tmp_path))
    for run in run_sweep.SWEEP:
        name = f"{run.config_name}.json"
        shipped = os.path.join(run_sweep.CONFIG_DIR, name)
        assert json.load(open(tmp_path / name)) == json.load(open(shipped)), name


def test_without_matplotlib_the_sweep_stops_before_any_run_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)        # import matplotlib -> ImportError
    monkeypatch.setattr(run_sweep, "run_one", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(SystemExit) as stop:
        run_sweep.main(["--smoke", "--only", "dense", "--out-dir", str(tmp_path), "--runs-dir", str(tmp_path / "r")])
    message = str(stop.value)
    assert message.startswith("error:") and "\n" not in message and 'pip install -e ".[plots]"' in message
    assert not os.path.exists(tmp_path / "results.md")
