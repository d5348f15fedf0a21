"""benchmarks/diagnostics/bench_startup_memory.py on CPU (--smoke: a tiny bf16 model, the launcher's own
start-up through Trainer, fused optimizer, 2 steps; the plain-PyTorch reference beside it):
the live-bytes accounting (CPU allocator, torch.profiler memory events) and what it shows
about the default path's memory (issue 15: the run-wide peak, start-up included, no higher
than the reference's at the same micro-batch).

Bytes per parameter of the default path (bf16 weights, ZeRO 1 on one data rank): the
start-up holds the fp32 model (the masters take its storage over), the bf16 weights and,
briefly, one bucket of the main-gradient buffer (the whole tiny model); a step holds bf16
weights 2 + fp32 masters 4 + Adam moments 8 and the main gradients only from backward to the
end of the update. Before that, the start-up peaked at 14 and every forward began at 18.
"""
from tests.benchmarks.common import run_script


def _phases(row):
    return {p["phase"]: p for p in row["phases"]}


def test_startup_peak_and_steps_hold_no_more_than_the_reference(tmp_path):
    _, data = run_script("diagnostics/bench_startup_memory.py", ["--smoke", "--out", tmp_path / "startup.json"])
    mega, ref = data["results"]
    assert (mega["side"], ref["side"]) == ("megatron_sffn", "reference") and mega["params"] == ref["params"]
    n = mega["params"]
    phases = _phases(mega)
    assert {"model build", "seeded initialisation", "optimizer construction", "deepspeed.initialize",
            "step 2: forward", "step 2: backward", "step 2: optimizer"} <= set(phases)
    # the start-up is no transient above the steady state: the run-wide peak is a step's
    assert mega["startup_peak_bytes"] <= mega["steady_step_peak_bytes"]
    assert mega["peak_phase"].startswith("step ") and mega["peak_bytes"] == max(
        mega["first_step_peak_bytes"], mega["steady_step_peak_bytes"])
    # start-up: fp32 model 4 + bf16 weights 2 + one bucket of main gradient (4, the whole model here)
    assert mega["startup_peak_bytes"] <= 10.1 * n, mega["startup_peak_bytes"] / n
    # a forward begins with bf16 weights, fp32 masters and Adam moments only (2 + 4 + 8): no main gradients
    assert phases["step 2: forward"]["start_bytes"] <= 14.1 * n, phases["step 2: forward"]["start_bytes"] / n
    held = mega["holdings"]["after step 2"]
    assert held.get("main gradients (fp32)", 0) == 0 and held["Adam moments"] == 8 * n
    # the run-wide peak (start-up included) no higher than the plain-PyTorch reference's
    assert mega["peak_bytes"] <= 1.02 * ref["peak_bytes"], (mega["peak_bytes"] / n, ref["peak_bytes"] / n)


def test_accounting_counts_live_bytes_by_phase():
    """The accounting itself: allocations and frees inside phases, the peak where it happened,
    and which phase allocated what was live then."""
    import torch

    from bench_startup_memory import LiveBytes
    acct = LiveBytes().start()
    with acct.phase("a"):
        x = torch.empty(1000, 1000)  # 4 MB, kept
        y = torch.empty(500, 1000)  # 2 MB, freed in b
    with acct.phase("b"):
        del y
        z = torch.empty(2000, 1000)  # 8 MB: peak 12 MB here
        del z
    acct.stop()
    report = acct.report(params=1)
    phases = _phases(report)
    assert phases["a"]["peak_bytes"] == 6_000_000 and phases["b"]["peak_bytes"] == 12_000_000
    assert report["peak_phase"] == "b" and report["peak_bytes"] == 12_000_000
    assert report["live_at_peak_by_allocating_phase"] == {"b": 8_000_000, "a": 4_000_000}
    del x
