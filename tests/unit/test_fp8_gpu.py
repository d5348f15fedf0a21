"""FP8 numerics on a GPU with FP8 tensor cores (skipped elsewhere): cuBLAS's scaled GEMMs,
with the layouts and scale shapes they demand, against float32, for every layer kind in a
whole model, eager and compiled. The CPU runs the same casts through torch's own
_scaled_mm (tests/unit/test_fp8.py); only here do cuBLAS's layout rules and fast
accumulation take part."""
import pytest
import torch

from megatron_sffn.config import load_config
from megatron_sffn.fp8.device import CPU_ENV, fp8_problem
from megatron_sffn.fp8.dispatch import assign_fp8, gemm_weights
from megatron_sffn.fp8.products import fp8_product
from megatron_sffn.fp8.recipe import E4M3, E5M2, Fp8Recipe
from megatron_sffn.structured.ops import block_diag_matmul


def _fp8_gpu() -> bool:
    import os
    return torch.cuda.is_available() and os.environ.get(CPU_ENV) != "1" and fp8_problem() is None


pytestmark = pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores")

RECIPES = {"tensorwise": Fp8Recipe("tensorwise", E5M2), "rowwise": Fp8Recipe("rowwise", E4M3)}
KIND_OVERRIDES = {"dense": ["model.ffn.rank=null", "self_guided.enabled=false"],
                  "lowrank": ["model.ffn.rank=64"], "blockdense": ["model.ffn.rank=64", "model.ffn.blocks=4"],
                  "blockshuffle": ["model.ffn.rank=null", "model.ffn.blocks=4"]}


def _rel(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


@pytest.mark.parametrize("recipe", list(RECIPES))
@pytest.mark.parametrize("shape", [(1024, 512), (4, 256, 128)], ids=["dense", "block-diagonal"])
def test_product_against_float32_on_the_gpu(recipe, shape):
    torch.manual_seed(0)
    x = torch.randn(2048, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(*shape, device="cuda") * 0.02).to(torch.bfloat16).requires_grad_()
    y = fp8_product(x, w, RECIPES[recipe])
    g = torch.randn_like(y)
    y.backward(g)
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y32 = torch.nn.functional.linear(x32, w32) if len(shape) == 2 else block_diag_matmul(x32, w32)
    y32.backward(g.float())
    assert _rel(y, y32) < 0.06 and _rel(x.grad, x32.grad) < 0.1 and _rel(w.grad, w32.grad) < 0.1


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("kind", list(KIND_OVERRIDES))
def test_model_loss_and_gradients_in_fp8_follow_bf16(kind, compiled):
    """A 4-layer d256 model of each kind (guide included where structured): loss within 1%,
    every GEMM weight's gradient within 25% (norm-relative) of the bf16 model's: e5m2 keeps two
    mantissa bits, and the first block's gradients pass through every block's (0.17 measured
    through torch's CPU _scaled_mm); a wrong layout or scale is off by O(1)."""
    from megatron_sffn.model.gpt import GPTModel
    cfg = load_config("configs/tiny_demo.json", [f"model.ffn.kind={kind}", "model.hidden_size=256",
                                                 "model.ffn_hidden_size=1024", *KIND_OVERRIDES[kind]])
    torch.manual_seed(0)
    ids = torch.randint(0, cfg.model.vocab_size, (8, cfg.model.seq_length + 1), device="cuda")

    def loss_and_grads(fp8: bool):
        model = GPTModel(cfg.model, guided=kind != "dense").cuda().initialize(seed=1, device="cuda")
        model = model.to(torch.bfloat16)
        assign_fp8(model, RECIPES["tensorwise"] if fp8 else None, tokens=8 * cfg.model.seq_length, layers="all")
        fn = torch.compile(model.loss) if compiled else model.loss
        loss = fn(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())
        loss.backward()
        return loss.item(), {n: p.grad.float() for n, p in gemm_weights(model).items() if p.grad is not None}

    bf16_loss, bf16_grads = loss_and_grads(False)
    assert len(bf16_grads) >= 4 * cfg.model.num_layers
    fp8_loss, fp8_grads = loss_and_grads(True)
    assert fp8_loss == pytest.approx(bf16_loss, rel=0.01) and fp8_loss != bf16_loss
    for name, grad in bf16_grads.items():
        if grad.norm() > 0:
            assert _rel(fp8_grads[name], grad) < 0.25, name


def test_bias_in_the_scaled_gemm_epilogue_on_the_gpu():
    """cuBLAS adds the bias inside the tensorwise FP8 GEMM (fast accumulation on): the output
    within bf16's rounding of the product plus a separate add, the bias gradient dy's column sums."""
    from megatron_sffn.fp8.products import bias_epilogue_applies, linear_with_bias
    torch.manual_seed(0)
    x = torch.randn(2048, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = (torch.randn(1024, 512, device="cuda") * 0.02).to(torch.bfloat16)
    b = (torch.randn(1024, device="cuda") * 0.1).to(torch.bfloat16).requires_grad_()
    w.fp8_recipe = RECIPES["tensorwise"]
    assert bias_epilogue_applies(w, 2048, torch.bfloat16)
    y = linear_with_bias(x, w, b)
    separate = fp8_product(x.detach(), w, RECIPES["tensorwise"]) + b.detach()
    assert _rel(y, separate) < 1e-2
    g = torch.randn_like(y)
    y.backward(g)
    torch.testing.assert_close(b.grad.float(), g.float().sum(0), rtol=1e-2, atol=1e-1)
