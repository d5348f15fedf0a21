"""benchmarks/bench_decode.py on CPU (--smoke: the tiny config, eager only; CUDA graphs need a GPU):
every case of pre-merge off/on and batch 1/2 is timed, and pre-merging changes no token."""
from tests.benchmarks.common import finish_script


def test_smoke_times_every_case_and_pre_merge_keeps_the_tokens(early_commands):
    _, args, started = early_commands["decode"]   # started by tests/benchmarks/conftest.py
    proc, data = finish_script(started, args)
    cases = {(c["pre_merge"], c["batch"], c["mode"]): c for c in data["cases"]}
    assert set(cases) == {(p, b, "eager") for p in ("off", "on") for b in (1, 2)}, sorted(cases)
    assert all(c["ms_per_token"] > 0 and c["decode_tokens_per_s"] > 0 for c in cases.values())
    for batch in (1, 2):
        assert cases[("on", batch, "eager")]["tokens"] == cases[("off", batch, "eager")]["tokens"]
    assert "CUDA graphs need a CUDA device" in proc.stderr
