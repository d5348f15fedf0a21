"""tools/compare_runs.py: two runs' loss curves step by step, on real metrics.jsonl files (two
training runs of the launcher where the difference must be real, written files for the edges)."""
import json
import subprocess
import sys

import pytest

from tools.compare_runs import compare, load_losses

from .common import ROOT


def write_metrics(folder, losses, extra_lines=()):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metrics.jsonl", "w") as f:
        for step, loss in losses.items():
            f.write(json.dumps({"step": step, "tokens": step * 10, "loss": loss, "lr": 1e-3}) + "\n")
        for line in extra_lines:
            f.write(line + "\n")
    return folder


def run_tool(*args):
    return subprocess.run([sys.executable, "tools/compare_runs.py", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_the_largest_difference_after_the_skipped_steps_decides(tmp_path):
    a = write_metrics(tmp_path / "a", {1: 10.0, 2: 8.0, 3: 6.0, 4: 5.0})
    b = write_metrics(tmp_path / "b", {1: 12.0, 2: 8.0, 3: 6.06, 4: 5.02})   # step 1: 20% off, skipped
    out = tmp_path / "c.json"
    proc = run_tool(a, b, "--after", 1, "--tolerance", 0.01, "--every", 1, "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["first_step"] == 2 and result["identical_steps"] == 1
    assert result["max_rel_diff_step"] == 3 and result["max_rel_diff"] == pytest.approx(0.01)
    assert result["within"] and result["steps_over"] == []
    assert "| 3 | 6.0000 | 6.0600 | 1.000% (largest) |" in proc.stdout and "tolerance 1.00%: within" in proc.stdout
    # the same pair from step 0 on: step 1 is over, exit 1, and the report names it
    proc = run_tool(a, b, "--tolerance", 0.01, "--out", out)
    assert proc.returncode == 1 and "NOT within (1 steps over)" in proc.stdout
    assert json.loads(out.read_text())["steps_over"] == [1]


def test_a_resumed_run_s_rewritten_steps_win_and_only_common_steps_count(tmp_path):
    a = write_metrics(tmp_path / "a", {1: 4.0, 2: 3.0, 3: 2.0})
    # a resumed run writes steps 2.. again after its first attempt's lines; the later line counts
    b = write_metrics(tmp_path / "b", {1: 4.0, 2: 9.0}, extra_lines=[json.dumps({"step": 2, "loss": 3.0})])
    assert load_losses(str(b)) == {1: 4.0, 2: 3.0}
    result = compare(load_losses(str(a)), load_losses(str(b)))
    assert result["steps"] == 2 and result["max_rel_diff"] == 0 and result["identical_steps"] == 2


@pytest.mark.parametrize("case, message", [
    ("missing", "no such metrics file"),
    ("empty", "no steps recorded"),
    ("garbled", "line 2: not a metrics record"),
    ("disjoint", "share no step after step 0"),
])
def test_bad_input_is_one_error_naming_the_file(tmp_path, case, message):
    a = write_metrics(tmp_path / "a", {1: 4.0, 2: 3.0})
    b = tmp_path / "b"
    if case == "empty":
        write_metrics(b, {})
    elif case == "garbled":
        write_metrics(b, {1: 4.0}, extra_lines=["{not json"])
    elif case == "disjoint":
        write_metrics(b, {7: 4.0})
    proc = run_tool(a, b / "metrics.jsonl" if case != "missing" else b)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr
    if case != "disjoint":
        assert str(b) in proc.stderr


@pytest.mark.slow
def test_two_real_runs_differ_only_where_their_configs_do(tmp_path):
    """The tiny demo twice with one seed (identical curves, exit 0 at tolerance 0), then with another
    learning rate (the curves part after the first step, exit 1 at a tight tolerance)."""
    base = [sys.executable, "launchers/pretrain.py", "--config", "configs/tiny_demo.json", "--no-compile",
            "--train-steps", "4", "--global-batch-size", "8", "--micro-batch-size", "4", "--log-interval", "2",
            "--eval-interval", "100", "--no-save", "--override", "model.seq_length=32",
            "--override", "self_guided.enabled=false"]
    for name, extra in (("a", []), ("b", []), ("c", ["--lr", "0.01"])):
        proc = subprocess.run(base + ["--run-dir", str(tmp_path / name)] + extra, cwd=ROOT, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    same = run_tool(tmp_path / "a", tmp_path / "b", "--tolerance", 0)
    assert same.returncode == 0 and "identical steps 4" in same.stdout, same.stdout
    other = run_tool(tmp_path / "a", tmp_path / "c", "--after", 1, "--tolerance", 1e-4)
    assert other.returncode == 1 and "NOT within" in other.stdout, other.stdout
