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
