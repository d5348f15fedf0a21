"""benchmarks/bench_reference.py runs end to end on CPU (--smoke): every FFN kind trains (the
loss falls), each case's parameter count is the project's own model's for the same config,
and the compiled reference trains exactly like the eager one. Timing is not asserted."""
import statistics

import pytest

from megatron_sffn.config import load_config
from megatron_sffn.model import GPTModel
from megatron_sffn.model.accounting import model_stats, train_flops_per_token
from tests import background
from tests.benchmarks.common import TINY, finish_script, start_script


@pytest.fixture(scope="module")
def commands(request, tmp_path_factory):
    """The selected tests' commands, started together (two at a time: tests/background.py):
    {name: (args, future)}."""
    wanted = background.selected_names(request)
    started = {}
    if "test_smoke_trains_every_kind_with_the_project_parameter_count" in wanted:
        args = ["--smoke", "--out", tmp_path_factory.mktemp("smoke") / "reference.json"]
        started["smoke"] = args, start_script("bench_reference.py", args)
    if "test_compiled_reference_trains_like_eager" in wanted:
        args = ["--smoke", "--kinds", "blockshuffle", "--modes", "eager", "compile", "--steps", "4", "--warmup", "1",
                "--out", tmp_path_factory.mktemp("compiled") / "compiled.json"]
        started["compiled"] = args, start_script("bench_reference.py", args)
    return started


def test_smoke_trains_every_kind_with_the_project_parameter_count(commands):
    args, started = commands["smoke"]
    proc, data = finish_script(started, args)
    rows = data["results"]
    assert [r["ffn"] for r in rows] == ["dense", "lowrank", "blockdense", "blockshuffle"]
    for r in rows:
        cfg = load_config(TINY, r["overrides"])
        assert r["params"] == r["accounting_params"] == model_stats(cfg.model).total_params
        assert r["params"] == sum(p.numel() for p in GPTModel(cfg.model).parameters())
        assert r["flops_per_token"] == train_flops_per_token(model_stats(cfg.model))
        assert len(r["losses"]) == 20 and r["timed_steps"] == 18
        assert statistics.mean(r["losses"][-3:]) < r["losses"][0] - 0.5, r["losses"]
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_time_s"])
        assert r["name"] in proc.stdout


def test_compiled_reference_trains_like_eager(commands):
    args, started = commands["compiled"]
    _, data = finish_script(started, args)
    eager, compiled = data["results"]
    assert (eager["mode"], compiled["mode"]) == ("eager", "compile")
    assert compiled["losses"] == pytest.approx(eager["losses"], rel=1e-4)
