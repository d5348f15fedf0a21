"""benchmarks/diagnostics/bench_emulated_collectives.py on a CPU: each case in its own process
(gloo's group of one rank standing in for NCCL), a row per case with host times, and the JSON."""
import json
import subprocess
import sys

import pytest

from tests.e2e.runs import ROOT

SCRIPT = "benchmarks/diagnostics/bench_emulated_collectives.py"


def test_each_case_reports_host_and_wall_time_per_call(tmp_path):
    out = tmp_path / "collectives.json"
    proc = subprocess.run([sys.executable, SCRIPT, "--rows", "8", "--hidden", "16", "--calls", "20", "--repeat", "2",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    data = json.loads(out.read_text())
    rows = {r["case"]: r for r in data["rows"]}
    assert list(rows) == ["nccl", "torch", "one-kernel"]
    assert rows["nccl"]["group_size"] == 1 and rows["torch"]["group_size"] == rows["one-kernel"]["group_size"] == 4
    for row in rows.values():
        for op in ("all_gather", "reduce_scatter"):
            assert 0 < row[f"{op}_small_issue_us"] <= row[f"{op}_small_wall_us"] * 1.0001
            assert row[f"{op}_block_wall_us"] > 0
    assert data["meta"]["world"] == 4 and data["meta"]["rows"] == 8
    for case in rows:
        assert any(line.startswith(case) for line in proc.stdout.splitlines()), proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--world", "1"], "--world must be >= 2"),
    (["--calls", "0"], "--calls must be >= 1, got 0"),
    (["--cases", "gloo"], "invalid choice: 'gloo'")])
def test_bad_arguments_name_the_flag(argv, message):
    proc = subprocess.run([sys.executable, SCRIPT, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
