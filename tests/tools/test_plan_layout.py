"""tools/plan_layout.py: the table, --json, --measured, and one clear line with exit code 2 on bad input."""
import json
import os
import subprocess
import sys

import pytest

from tools.plan_layout import main

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CONFIG = os.path.join(ROOT, "configs", "6p7b_lowrank.json")
FAST = ["--micro-batch-sizes", "4,8"]


def test_json_lists_ranked_and_excluded_layouts(capsys):
    assert main(["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--json"] + FAST) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gpus"] == 4 and out["global_batch_size"] == 512
    ranked, excluded = out["ranked"], out["excluded"]
    assert ranked and all(r["peak_gb"] <= 80 for r in ranked)
    assert [r["step_s"] for r in ranked] == sorted(r["step_s"] for r in ranked)
    assert "parallel.tensor=1" in ranked[0]["overrides"]
    assert any("not supported with pipeline" in e["reason"] for e in excluded)
    assert any(e["reason"].startswith("predicted ") and e["peak_gb"] > 80 for e in excluded)


def test_table_names_the_configs_own_layouts(capsys):
    assert main(["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "141"] + FAST) == 0
    out = capsys.readouterr().out
    assert "rank  layout" in out and "tok/s/GPU" in out
    assert "its layout for 4x80GB (t1 p1 d4 z1 mb4): rank" in out
    assert "excluded:" in out and "constants" in out


def test_cuda_graphs_flag_ranks_replayed_layouts_first_where_the_host_bounds(capsys, monkeypatch):
    monkeypatch.delenv("MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS", raising=False)
    small = os.path.join(ROOT, "configs", "1p3b_lowrank.json")
    argv = ["--config", small, "--gpus", "4", "--gpu-memory-gb", "141", "--global-batch-size", "32",
            "--micro-batch-sizes", "2", "--json"]
    assert main(argv) == 0
    without = json.loads(capsys.readouterr().out)
    assert main(argv + ["--cuda-graphs"]) == 0
    out = json.loads(capsys.readouterr().out)
    best = out["ranked"][0]
    assert best["name"].endswith(" cg") and best["layout"]["cuda_graphs"] is True
    assert "training.cuda_graphs=true" in best["overrides"] and "training.compile=true" in best["overrides"]
    assert best["tokens_per_s_per_gpu"] > 1.2 * without["ranked"][0]["tokens_per_s_per_gpu"]
    assert not any(r["layout"]["cuda_graphs"] for r in without["ranked"])
    assert any("needs 'parallel.tensor' = 1" in e["reason"] and e["name"].endswith(" cg") for e in out["excluded"])


def test_script_prints_clean_json_on_stdout():
    """As a process (DeepSpeed's import-time log must not reach stdout)."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "plan_layout.py"), "--config", CONFIG,
                           "--gpus", "2", "--gpu-memory-gb", "141", "--micro-batch-sizes", "8", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ranked"]


def test_nothing_fits_exits_1(capsys):
    assert main(["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "10"] + FAST) == 1
    assert "no layout fits" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--config", "missing.json", "--gpus", "4", "--gpu-memory-gb", "80"], "config file not found: missing.json"),
    (["--config", CONFIG, "--gpus", "0", "--gpu-memory-gb", "80"], "--gpus and --gpu-memory-gb must be positive"),
    (["--config", CONFIG, "--gpus", "4"], "--gpu-memory-gb is required"),
    (["--config", CONFIG, "--gpus", "four", "--gpu-memory-gb", "80"], "argument --gpus: invalid int value"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--override", "model.hidden_sise=1"],
     "unknown config key 'model.hidden_sise'"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--micro-batch-sizes", "8,x"],
     "--micro-batch-sizes must be positive integers"),
    (["--measured", "nowhere.json"], "measured-results file not found: nowhere.json"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--top", "0"], "--top must be >= 1, got 0"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--achievable-tflops", "-1"],
     "--achievable-tflops must be positive, got -1"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--nvlink-gb-s", "0"],
     "--nvlink-gb-s must be positive, got 0"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--tp-overlap", "1.5"],
     "--tp-overlap is a fraction in [0, 1], got 1.5"),
    (["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "80", "--overhead-gb", "-1"],
     "--overhead-gb must be >= 0, got -1"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], captured.err
    assert captured.out == ""


def test_measured_file_puts_predictions_beside_measurements(capsys):
    path = os.path.join(ROOT, "benchmarks", "results", "layout_planner_measured.json")
    assert main(["--measured", path, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    measured = [r for r in rows if r["measured_allocated_gb"] is not None]
    pending = [r for r in rows if r["measured_allocated_gb"] is None]
    six = [r for r in rows if "6p7b" in r["config"]]
    assert measured and pending
    for r in measured:
        assert r["memory_error"] == pytest.approx((r["predicted_allocated_gb"] - r["measured_allocated_gb"])
                                                  / r["measured_allocated_gb"])
    assert {r["layout_name"] for r in six} >= {"t1 p1 d4 z1 mb2", "t4 p1 d1 z1 mb2 sp", "t1 p4 d1 z1 mb2"}
    # a pipeline number read from rank 0's log is the first stage's, compared with that stage
    first_stage = [r for r in measured if r.get("measured_stage") == 0]
    assert first_stage and all(r["predicted_allocated_gb"] <= r["predicted_peak_gb"] for r in first_stage)


def test_constant_flags_reach_the_model(capsys):
    def first(extra):
        assert main(["--config", CONFIG, "--gpus", "4", "--gpu-memory-gb", "141", "--json",
                     "--micro-batch-sizes", "8"] + extra) == 0
        ranked = json.loads(capsys.readouterr().out)["ranked"]
        return {r["name"]: r for r in ranked}["t1 p1 d4 z1 mb8"]
    base = first([])
    assert first(["--overhead-gb", "10"])["peak_gb"] == pytest.approx(base["peak_gb"] + 7)
    assert first(["--achievable-tflops", "215"])["step_s_by_part"]["compute"] == pytest.approx(
        2 * base["step_s_by_part"]["compute"])
    assert first(["--fused-optimizer-ps-per-param", "140"])["step_s_by_part"]["optimizer"] == pytest.approx(
        10 * base["step_s_by_part"]["optimizer"])
