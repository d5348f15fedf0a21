"""On a tensor group of one rank a linear's bias goes into its last GEMM (F.linear with a bias:
cuBLAS's addmm epilogue), so no separate add writes the output once more. Same values as the
separate add, for every kind whose last factor is dense; block-diagonal last factors, guided
steps, FP8 products and tensor-parallel layers keep the add."""
import pytest
import torch

from megatron_sffn.fp8.recipe import Fp8Recipe
from megatron_sffn.parallel.mappings import TensorParallel
from megatron_sffn.structured.guide import GuideState
from megatron_sffn.structured.linear import ParallelLinear

SHAPES = {"dense": {}, "lowrank": {"rank": 16}, "blockdense": {"rank": 16, "blocks": 4},
          "blockshuffle": {"blocks": 4}}


def _layer(kind, mode, guided=False):
    """A 64 -> 128 (column) or 128 -> 64 (row) layer, every parameter drawn N(0, 0.1)."""
    torch.manual_seed(0)
    sizes = (64, 128) if mode == "column" else (128, 64)
    guide_state = GuideState(active=True, seed=1, reduce_flop=False) if guided else None
    layer = ParallelLinear(*sizes, mode, TensorParallel.single(), kind=kind, guided=guided,
                           guide_state=guide_state, **SHAPES[kind])
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return layer


def _graph_ops(fn, *args):
    ops = []

    def backend(gm, example_inputs):
        ops.extend((str(n.target), len(n.args)) for n in gm.graph.nodes if n.op == "call_function")
        return gm
    torch._dynamo.reset()
    torch.compile(fn, backend=backend)(*args)
    return ops


@pytest.mark.parametrize("kind", list(SHAPES))
@pytest.mark.parametrize("mode", ["column", "row"])
def test_fused_bias_equals_the_separate_add(kind, mode):
    layer = _layer(kind, mode)
    x = torch.randn(8, layer.structure.in_features)
    fused = layer.structure.forward_with_bias(x, layer.bias)
    separate = layer.add_bias(layer.forward_unbiased(x))
    if kind == "blockshuffle":
        assert fused is None  # its last factor is block-diagonal
    else:
        torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(x), separate, rtol=1e-5, atol=1e-6)


def test_the_compiled_graph_adds_the_bias_inside_the_linear():
    layer = _layer("lowrank", "column")
    x = torch.randn(8, 64)
    ops = _graph_ops(layer, x)
    linears = [n for op, n in ops if "linear" in op]
    assert 3 in linears  # (z, U, bias)
    assert not any(op.endswith("add") for op, _ in ops), ops


def test_guided_steps_and_fp8_keep_the_separate_add():
    layer = _layer("lowrank", "column", guided=True)
    x = torch.randn(16, 64)
    with torch.no_grad():
        guided = layer(x, use_guide=True)
        alpha = layer.guide_state.alpha_tensor
        want = layer.add_bias(alpha * layer.guide(x) + (1 - alpha) * layer.structure(x))
    torch.testing.assert_close(guided, want, rtol=1e-5, atol=1e-6)
    plain = _layer("dense", "column")
    plain.structure.weight.fp8_recipe = Fp8Recipe()
    assert plain.structure.forward_with_bias(x, plain.bias) is None
