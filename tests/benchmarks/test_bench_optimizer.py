"""benchmarks/bench_optimizer.py runs end to end (--smoke, CPU): every case builds the real
TrainEngine, trains, and lands in the JSON with the same model. Timing is not asserted."""
import json


def test_smoke_run_writes_every_case(early_commands):
    # `bench_optimizer.py --smoke --steps 2 --warmup 1` (MASTER_PORT 29547), started by tests/benchmarks/conftest.py
    folder, _, started = early_commands["optimizer"]
    out = folder / "opt.json"
    proc = started.result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.load(open(out))["rows"]
    assert [r["case"] for r in rows] == ["deepspeed_zero1", "fused_zero0", "fused_zero1", "fused_zero1_compiled"]
    assert len({r["params"] for r in rows}) == 1 and rows[0]["params"] > 0
    assert all(r["step_ms"] > 0 for r in rows)
    assert "vs deepspeed_zero1" in proc.stdout
