"""benchmarks/bench_optimizer.py runs end to end (--smoke, CPU): every case builds the real
TrainEngine, trains, and lands in the JSON with the same model. Timing is not asserted."""
import json
import subprocess
import sys

from tests.e2e.runs import ROOT, base_env


def test_smoke_run_writes_every_case(tmp_path):
    out = tmp_path / "opt.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_optimizer.py", "--smoke", "--steps", "2", "--warmup", "1",
                           "--out", str(out)], cwd=ROOT, env=base_env({"MASTER_PORT": "29547"}),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.load(open(out))["rows"]
    assert [r["case"] for r in rows] == ["deepspeed_zero1", "fused_zero0", "fused_zero1"]
    assert len({r["params"] for r in rows}) == 1 and rows[0]["params"] > 0
    assert all(r["step_ms"] > 0 for r in rows)
    assert "vs deepspeed_zero1" in proc.stdout
