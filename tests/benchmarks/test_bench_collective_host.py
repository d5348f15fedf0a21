"""benchmarks/diagnostics/bench_collective_host.py on a CPU: two gloo ranks time each way the model issues a
collective, under each process-group setting, and write one row per setting."""
import json
import subprocess
import sys

import pytest

from tests.distributed.launcher import ROOT

pytestmark = pytest.mark.slow


def test_two_ranks_time_every_call_under_each_setting(tmp_path):
    out = tmp_path / "collective_host.json"
    cmd = [sys.executable, "benchmarks/diagnostics/bench_collective_host.py", "--nproc", "2", "--iterations", "20",
           "--shape", "8", "16", "--settings", "default", "no-fr", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "functional_all_gather" in done.stdout  # the table
    result = json.loads(out.read_text())
    assert result["meta"]["nproc"] == 2
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {"default", "no-fr"}
    assert rows["no-fr"]["env"]["TORCH_FR_BUFFER_SIZE"] == "0" and rows["default"]["env"] == {}
    for row in rows.values():
        assert row["backend"] == "gloo"
        assert set(row["host_us"]) == {"elementwise", "all_gather", "all_gather_async", "functional_all_gather",
                                       "reduce_scatter", "functional_reduce_scatter"}
        assert all(v > 0 for v in row["host_us"].values())
