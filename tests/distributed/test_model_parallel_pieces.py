"""The model's parallel pieces in two processes: the pipeline module is GPTModel, the
structured layers' tensor-parallel traffic is what DESIGN.md promises, layout errors stop
before any process group exists."""
import pytest
import torch

from .launcher import run_ranks

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checks(tmp_path_factory):
    out = tmp_path_factory.mktemp("model_checks")
    run_ranks(2, "tests/distributed/workers/model_checks.py", [], str(out))
    return torch.load(out / "model_checks.pt")


@pytest.mark.parametrize("config", ["dense", "lowrank", "blockdense", "blockshuffle", "lowrank_sgt",
                                    "untied_swiglu_rmsnorm"])
def test_one_stage_pipeline_module_is_gpt_model(checks, config):
    """Same parameter names (mapped to layout-free ones), same initial values, same loss."""
    result = checks["pipeline"][config]
    assert result["names_equal"]
    assert result["max_param_diff"] == 0.0
    assert result["pipe_loss"] == result["gpt_loss"]


# elements per token crossing the tensor group, forward and backward, for the FFN of
# d = 32, f = 64 (rank 8 lowrank, rank 16 blockdense, 4-block blockshuffle)
EXPECTED_WIDTH = {
    "dense": lambda t: t["hidden"],             # Megatron MLP: all-reduce T x d each way
    "lowrank": lambda t: t["rank"],             # only the rank-r bottleneck crosses
    "blockdense": lambda t: t["rank"],
    "blockshuffle": lambda t: min(t["hidden"], t["ffn"]),
    "lowrank_guided": lambda t: t["rank"] + t["hidden"],  # structured + guide in ONE collective
}


@pytest.mark.parametrize("kind", list(EXPECTED_WIDTH))
def test_ffn_collectives_are_bounded_by_the_bottleneck(checks, kind):
    traffic = checks["traffic"][kind]
    expected = traffic["tokens"] * EXPECTED_WIDTH[kind](traffic) * 4  # fp32 bytes
    for direction in ("forward", "backward"):
        assert traffic[direction] == {"calls": 1, "bytes": expected}, (direction, traffic)
    if kind != "lowrank_guided":  # never more than a dense Megatron MLP
        assert expected <= checks["traffic"]["dense"]["forward"]["bytes"]
    if kind == "lowrank":
        assert expected * 4 == checks["traffic"]["dense"]["forward"]["bytes"]  # r = d / 4


@pytest.mark.parametrize("case", ["dense", "lowrank", "blockdense", "blockshuffle", "dense_sp", "lowrank_sp",
                                  "blockdense_sp", "blockshuffle_sp"])
def test_column_parallel_layers_take_their_bias_shard_into_the_product(checks, case):
    """Under tensor parallelism (and SP) a column-parallel layer whose last factor is dense adds
    its bias shard in the region's GEMM (no separate pass over the output), with the output and
    every gradient of the product plus a separate add; a block-diagonal last factor keeps the add."""
    result = checks["column_bias"][case]
    assert result["fused"] == (not case.startswith("blockshuffle")), result
    assert result["max_rel_diff"] < 1e-5 and result["bias_grad_nonzero"], result


@pytest.mark.parametrize("case,field", [
    ("world_not_tensor_x_pipe_x_data", "parallel.tensor x parallel.pipeline"),
    ("more_stages_than_blocks", "parallel.pipeline"),
    ("zero2_with_pipeline", "parallel.zero_stage"),
    ("zero3_with_self_guided", "parallel.zero_stage"),
])
def test_layout_errors_stop_with_one_message_before_any_group(checks, case, field):
    error = checks["errors"][case]
    assert error["message"] is not None and field in error["message"]
    assert "\n" not in error["message"]
    assert error["groups_created"] == 0
