"""benchmarks/bench_host_overhead.py on CPU: the launcher's step by phase, its syncs, and the
plain-PyTorch reference's, one tiny case each (eager, a few steps)."""
from tests.benchmarks.common import run_script


def test_phases_and_syncs_of_the_launchers_step_and_the_reference(tmp_path):
    out = tmp_path / "host.json"
    _, result = run_script("bench_host_overhead.py", [
        "--configs", "configs/1p3b_lowrank.json", "--modes", "eager", "--reference", "--steps", "3",
        "--warmup", "1", "--count-steps", "4", "--log-interval", "2", "--hidden-size", "32",
        "--ffn-hidden-size", "64", "--rank", "8", "--out", out])
    ours, reference = result["results"]
    assert ours["side"] == "megatron_sffn" and reference["side"] == "reference"
    assert ours["optimizer"] == "fused" and ours["layers"] == 24 and ours["param_tensors"] == reference["param_tensors"]
    for row in (ours, reference):
        phases = sum(row[f"{p}_ms"] for p in ("forward", "backward", "optimizer_step", "loop"))
        assert row["step_ms"] > 0 and abs(phases - row["step_ms"]) < 0.25 * row["step_ms"]
        assert row["forward_ms"] > 0 and row["backward_ms"] > 0 and row["optimizer_step_ms"] > 0
    # the default path waits for the device only at log steps; the reference reads its loss every step
    assert ours["syncs_per_step"] == 0 and ours["syncs_per_log_step"] <= 1
    assert reference["syncs_per_step"] == 1
