"""benchmarks/bench_ledger.py runs end to end on CPU (--smoke): both sides in their own
processes, every category present, the categories adding up to the profiled wall time, and the
attribution alive (GEMMs, the optimizer and the loss found on both sides, our fused optimizer's
kernel under "optimizer"). Timing is not asserted. The categorisation itself:
tests/benchmarks/test_profile_summary.py."""
import pytest

from tests.benchmarks.common import finish_script

from profile_summary import FP8_CASTS, IDLE, LEDGER_ROWS  # noqa: E402  (benchmarks/ is on sys.path via common)


def test_smoke_ledger_has_both_sides_and_adds_up(early_commands):
    _, args, started = early_commands["ledger"]   # started by tests/benchmarks/conftest.py
    proc, data = finish_script(started, args)
    (result,) = data["results"]
    assert data["rows"] == list(LEDGER_ROWS) and IDLE in LEDGER_ROWS
    for side in ("ours", "reference"):
        r = result[side]
        assert "error" not in r, r
        assert r["side"] == side and r["source"] == "host ops" and r["steps"] == 2
        ms = r["ms_per_step"]
        assert set(ms) == set(LEDGER_ROWS) and all(v >= 0 for v in ms.values())
        assert sum(ms.values()) == pytest.approx(r["wall_ms_per_step"], rel=0.01)
        assert r["busy_ms_per_step"] == pytest.approx(sum(v for k, v in ms.items() if k != IDLE))
        for row in ("GEMMs", "optimizer", "cross-entropy", "elementwise/norm"):
            assert ms[row] > 0, (side, row, ms)
        assert ms["other"] < 0.2 * r["busy_ms_per_step"], r["largest"]["other"]
        assert r["unprofiled_step_ms"] > 0
    ours = result["ours"]
    assert ours["optimizer"] == "fused" and ours["precision"] == "bf16"
    assert "aten::_fused_adamw_" in [k["name"] for k in ours["largest"]["optimizer"]]
    assert ours["ms_per_step"]["gradient copies and casts"] > 0  # the hooks' concatenate-and-copy
    for row in LEDGER_ROWS:  # a bf16 step has no FP8 casts: the table leaves their row out
        assert (row in proc.stdout) == (row != FP8_CASTS), row


def test_clock_samples_are_summarised_and_a_machine_without_nvidia_smi_records_none():
    from bench_ledger import ClockSampler, clock_summary
    lines = ["1980, 650.12", "1755, 699.80", "[N/A], [N/A]", ""]  # nvidia-smi's csv,noheader,nounits
    summary = clock_summary(lines)
    assert summary["clock_samples"] == 2 and summary["sm_clock_mhz_min"] == 1755
    assert summary["sm_clock_mhz_mean"] == pytest.approx(1867.5) and summary["power_w_mean"] == pytest.approx(674.96)
    assert clock_summary(["[N/A], [N/A]"]) == {}
    import shutil
    if shutil.which("nvidia-smi") is None:  # this CPU machine: the ledger's rows carry no clock keys
        with ClockSampler() as sampler:
            pass
        assert sampler.summary == {}
