"""torch.compile of every FFN kind's blocks: whole blocks, no graph breaks, eager's numbers.

A graph break inside a block splits it into several graphs with eager code between them:
more kernel launches and host work per step, and no fusion across the break. BlockDense and
BlockShuffle broke at every block-diagonal product (a `bmm` into a strided `out=`) until the
product got a traceable form under compile (structured/ops.py); this keeps every kind whole.
"""
import pytest
import torch
from torch._dynamo.utils import counters

from megatron_sffn.model import GPTModel
from megatron_sffn.model.compile import compile_blocks
from tests.distributed.common import tiny_config

pytestmark = pytest.mark.slow

KINDS = ["dense", "lowrank", "blockdense", "blockshuffle"]


def model(kind: str, layers: int = 3):
    cfg = tiny_config(kind).model
    cfg.num_layers = layers
    return GPTModel(cfg).initialize(1)


@pytest.mark.parametrize("kind", KINDS)
def test_compiled_blocks_have_no_graph_break_and_equal_eager(kind):
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = model(kind), model(kind)
    assert compile_blocks(compiled) == 3
    assert_same_losses_and_gradients(eager, compiled, lambda m, ids: m.loss(ids, ids))
    assert dict(counters["graph_break"]) == {}
    # per FFN kind in the model (dense first block, structured others): one graph, and one
    # more for the first call before the rotary cache holds the sequence length
    assert counters["stats"]["unique_graphs"] <= 4


def assert_same_losses_and_gradients(eager, compiled, loss):
    """Three steps' losses (loss(model, ids)) and the summed gradients, to 1e-5 relative."""
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        ids = torch.randint(0, 64, (2, 16), generator=generator)
        want, got = loss(eager, ids), loss(compiled, ids)
        want.backward()
        got.backward()
        assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5), step
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert float((q.grad - p.grad).abs().max() / scale) <= 1e-5, name


def test_blocks_compiled_several_to_a_region_equal_eager_with_fewer_region_calls():
    """training.blocks_per_region: 5 blocks, 2 to a region, make 3 region calls a forward
    (2 + 2 + 1) where one region per block makes 5, with eager's losses and gradients."""
    from megatron_sffn.model.pipeline import CheckpointedGPT
    from megatron_sffn.parallel.mappings import TensorParallel
    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config("lowrank").model
    cfg.num_layers = 5
    eager, grouped = (CheckpointedGPT(cfg, TensorParallel.single(), False, None).initialize(1) for _ in range(2))
    assert compile_blocks(grouped, blocks_per_region=2) == 5
    calls = []
    run_group = grouped.block_group
    grouped.block_group = lambda blocks, x: calls.append(len(blocks)) or run_group(blocks, x)
    assert_same_losses_and_gradients(eager, grouped, lambda m, ids: m(ids, ids))
    assert calls == [2, 2, 1] * 3
    assert dict(counters["graph_break"]) == {}
    # the group holding the dense first block, the structured pair, the last block alone (and
    # one more before the rotary cache holds the sequence length): the pairs share their graph
    assert counters["stats"]["unique_graphs"] <= 4


def test_blocks_are_compiled_one_to_a_region_where_grouping_cannot_apply():
    """Guided blocks draw in Python between blocks, and a pipeline calls each block itself."""
    from megatron_sffn.model.compile import grouping_refusal
    from megatron_sffn.model.pipeline import CheckpointedGPT
    from megatron_sffn.parallel.mappings import TensorParallel
    cfg = tiny_config("lowrank").model
    guided = CheckpointedGPT(cfg, TensorParallel.single(), True, None)
    assert grouping_refusal(guided, None) == "guided blocks draw in Python between blocks"
    compile_blocks(guided, blocks_per_region=2)
    assert guided.block_group is None
    assert grouping_refusal(GPTModel(cfg), None) == "the pipeline engine calls each block itself"
    unguided = CheckpointedGPT(cfg, TensorParallel.single(), False, None)
    assert grouping_refusal(unguided, "reduce-overhead") == "CUDA graphs replay each block's region"
    assert grouping_refusal(unguided, None) is None


def test_block_diagonal_product_has_the_same_gradients_compiled():
    from megatron_sffn.structured.ops import block_diag_matmul
    torch._dynamo.reset()
    x = torch.randn(6, 12, requires_grad=True)
    blocks = torch.randn(3, 5, 4, requires_grad=True)
    y = block_diag_matmul(x, blocks)
    gy = torch.randn_like(y)
    want = torch.autograd.grad(y, (x, blocks), gy)
    xc, bc = x.detach().requires_grad_(), blocks.detach().requires_grad_()
    yc = torch.compile(block_diag_matmul, fullgraph=True)(xc, bc)
    got = torch.autograd.grad(yc, (xc, bc), gy)
    torch.testing.assert_close(yc, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


CUDA_TOO = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the C++ wrapper's CUDA path (cubins launched from C++) needs a GPU"))]


@pytest.mark.parametrize("device", CUDA_TOO)
def test_cpp_wrapper_launches_the_blocks_from_cpp_with_eager_numbers(device):
    """training.cpp_wrapper: the blocks' forward and backward run through Inductor's C++ wrapper
    (what a multi-GPU CUDA run gets by default), with eager's losses and gradients."""
    from torch._inductor.utils import run_and_get_code
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = model("lowrank", layers=2).to(device), model("lowrank", layers=2).to(device)
    assert compile_blocks(compiled, cpp_wrapper=True) == 2
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0)).to(device)
    want = eager.loss(ids, ids)
    got, codes = run_and_get_code(lambda: compiled.loss(ids, ids))
    got.backward()
    want.backward()
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    assert codes and all("inductor_entry_impl" in code for code in codes)  # C++ entry points, not Python
    assert dict(counters["graph_break"]) == {}
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert float((q.grad - p.grad).abs().max() / scale) <= 1e-5, name


@pytest.mark.parametrize("device", CUDA_TOO)
def test_with_the_cpp_wrapper_a_backward_graph_is_lowered_with_its_forward(device):
    """AOTAutograd lowers a backward graph at its first call by default, after torch.compile's
    options are off Inductor's config again: torch 2.11 then lowered it for the C++ wrapper without
    the cubins the wrapper launches, and the first backward of every compiled block failed on CUDA
    ("CudaKernelParamCache not populated", an H100). compile_blocks has backward graphs lowered
    with their forward instead (process-wide): one forward call makes both graphs, the backward none."""
    from torch._inductor.utils import run_and_get_code
    from megatron_sffn.model.compile import compile_options
    torch._dynamo.reset()
    compile_blocks(model("dense", layers=1).to(device), cpp_wrapper=True)
    linear = torch.nn.Linear(32, 64).to(device)
    f = torch.compile(lambda x: torch.nn.functional.gelu(linear(x)), dynamic=False, options=compile_options(None, True))
    x = torch.randn(8, 32, device=device, requires_grad=True)
    y, forward_codes = run_and_get_code(f, x)
    _, backward_codes = run_and_get_code(lambda: y.sum().backward())
    assert len(forward_codes) == 2 and backward_codes == []
    want = torch.nn.functional.gelu(torch.nn.functional.linear(x, linear.weight, linear.bias))
    (gx,) = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(x.grad, gx)
