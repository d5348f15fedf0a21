"""On a tensor group of one rank a linear's bias goes into its last GEMM (F.linear with a bias:
cuBLAS's addmm epilogue; _scaled_mm's for a tensorwise FP8 product), so no separate add writes
the output once more. Same values as the separate add, for every kind whose last factor is
dense; block-diagonal last factors, guided steps, rowwise FP8 products and tensor-parallel
layers keep the add."""
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
    plain = _layer("dense", "column").to(torch.bfloat16)
    plain.structure.weight.fp8_recipe = Fp8Recipe(scaling="rowwise")
    assert plain.structure.forward_with_bias(x.to(torch.bfloat16), plain.bias) is None
    plain.structure.weight.fp8_recipe = Fp8Recipe()
    assert plain.structure.forward_with_bias(x, plain.bias) is None            # fp32 output: the add
    assert plain.structure.forward_with_bias(x[:3].to(torch.bfloat16), plain.bias) is None  # 3 tokens


def _forward_backward(layer, run, x, g):
    """run(layer, x)'s output, and the input's and every parameter's gradient for dy = g."""
    layer.zero_grad()
    x = x.detach().clone().requires_grad_()
    y = run(layer, x)
    y.backward(g)
    return y, x.grad, {n: p.grad.clone() for n, p in layer.named_parameters()}


@pytest.mark.parametrize("kind", ["dense", "lowrank", "blockdense"])
def test_fp8_tensorwise_adds_the_bias_in_the_scaled_gemm(kind):
    """The same FP8 GEMMs as the product followed by an add: the weight and input gradients are
    those of the unfused product bit for bit, the output and the bias gradient (dy summed over
    tokens, in fp32) within bf16's rounding of the add."""
    layer = _layer(kind, "column").to(torch.bfloat16)
    layer.structure.output_weight().fp8_recipe = Fp8Recipe()
    torch.manual_seed(1)
    x = torch.randn(4, 16, 64, dtype=torch.bfloat16)
    g = torch.randn(4, 16, 128, dtype=torch.bfloat16)
    assert layer.structure.forward_with_bias(x, layer.bias) is not None
    fused = _forward_backward(layer, lambda m, a: m.structure.forward_with_bias(a, m.bias), x, g)
    separate = _forward_backward(layer, lambda m, a: m.add_bias(m.forward_unbiased(a)), x, g)
    torch.testing.assert_close(fused[0], separate[0], rtol=2 ** -7, atol=2 ** -7)
    assert torch.equal(fused[1], separate[1])
    for name, grad in fused[2].items():
        if name == "bias":
            torch.testing.assert_close(grad, separate[2][name], rtol=2 ** -7, atol=1e-2)
            torch.testing.assert_close(grad.float(), g.float().sum((0, 1)), rtol=2 ** -7, atol=1e-2)
        else:
            assert torch.equal(grad, separate[2][name]), name


def test_the_fp8_epilogue_compiles_without_graph_breaks_or_a_separate_add():
    from torch._dynamo.utils import counters
    layer = _layer("lowrank", "column").to(torch.bfloat16)
    layer.structure.output_weight().fp8_recipe = Fp8Recipe()
    x = torch.randn(2, 16, 64, dtype=torch.bfloat16)
    ops = _graph_ops(lambda a: layer.structure.forward_with_bias(a, layer.bias), x)
    # the FP8 product is its autograd function (its _scaled_mm inside); nothing adds after it
    assert any("autograd_function_apply" in op for op, _ in ops) and not any(op.endswith("add") for op, _ in ops), ops
    torch._dynamo.reset()
    counters.clear()
    eager = _forward_backward(layer, lambda m, a: m.structure.forward_with_bias(a, m.bias), x, torch.ones(2, 16, 128,
                                                                                                          dtype=torch.bfloat16))
    compiled = _forward_backward(layer, torch.compile(lambda m, a: m.structure.forward_with_bias(a, m.bias)), x,
                                 torch.ones(2, 16, 128, dtype=torch.bfloat16))
    assert not counters["graph_break"]
    torch.testing.assert_close(compiled[0], eager[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(compiled[2]["bias"], eager[2]["bias"])
