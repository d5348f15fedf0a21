"""benchmarks/bench_fp8.py: the --smoke table on the CPU (torch's _scaled_mm), every case with a
bf16 time and both recipes' times and ratios; without FP8 tensor cores and without --smoke, one
clear error."""
from tests.benchmarks.common import finish_script

import bench_fp8  # noqa: E402  (benchmarks/ is on sys.path via common)


def test_smoke_times_every_case_in_bf16_and_both_recipes(early_commands):
    _, args, started = early_commands["fp8"]   # started by tests/benchmarks/conftest.py
    proc, result = finish_script(started, args)
    rows = result["rows"]
    assert [r["case"] for r in rows] == [c for c, _ in bench_fp8.SMOKE_SHAPES]
    for row in rows:
        assert set(row["ms"]) == {"bf16", "tensorwise", "rowwise"} and all(v > 0 for v in row["ms"].values())
        assert row["speedup"]["tensorwise"] == row["ms"]["bf16"] / row["ms"]["tensorwise"]
    assert "bf16 ms" in proc.stdout and "rowwise ms" in proc.stdout


def test_cases_filter_picks_by_name():
    args = bench_fp8.parse_args(["--cases", "lowrank U"])
    assert args.cases == ["lowrank U"]
    assert any("lowrank U" in c for c, _ in bench_fp8.SHAPES)


def test_without_fp8_tensor_cores_it_is_one_error(early_commands):
    # `bench_fp8.py --tokens 16` without MEGATRON_SFFN_FP8_ON_CPU, started by tests/benchmarks/conftest.py
    proc = early_commands["fp8_error"][2].result()
    assert proc.returncode == 2 and "training.fp8.enabled" in proc.stderr and "--smoke" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_kernel_split_of_a_compiled_product_puts_the_casts_in_their_own_row(monkeypatch):
    """The split on the CPU, compiled, with Inductor's kernels named in the profile: bf16 spends
    nothing on FP8 casts, tensorwise FP8 spends time on both its _scaled_mm GEMMs and its casts,
    and every side's rows add up to its busy time."""
    import torch
    import torch._inductor.config as inductor_config

    from megatron_sffn.fp8.device import CPU_ENV
    monkeypatch.setenv(CPU_ENV, "1")
    monkeypatch.setattr(inductor_config.cpp, "enable_kernel_profile", True)
    times = bench_fp8.case_times((64, 32), 32, ["tensorwise"], torch.device("cpu"), compiled=True, repeats=2,
                                 profile_calls=3)
    torch._dynamo.reset()
    split = times["split"]
    assert split["bf16"]["GEMMs"] > 0 and split["bf16"]["FP8 scales and casts"] == 0
    assert split["tensorwise"]["GEMMs"] > 0 and split["tensorwise"]["FP8 scales and casts"] > 0
    for side in split.values():
        busy = sum(v for k, v in side.items() if k not in ("busy", "idle"))
        assert abs(busy - side["busy"]) <= 1e-6 * max(1.0, side["busy"])
