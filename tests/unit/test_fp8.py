"""FP8 products (megatron_sffn/fp8/): scaling and casting, the three GEMMs of a linear and of a
block-diagonal factor against float32, which weights the dispatch puts in FP8, the config
checks, and the refusal where no FP8 tensor cores are. The products run on the CPU through
torch's own _scaled_mm (the same casts and scales as on a GPU; GPU numerics:
tests/gpu/test_fp8_numerics.py)."""
import pytest
import torch

from megatron_sffn.config import ConfigError, load_config
from megatron_sffn.fp8 import dispatch
from megatron_sffn.fp8.device import CPU_ENV, fp8_problem
from megatron_sffn.fp8.products import fits, fp8_product
from megatron_sffn.fp8.recipe import E4M3, E5M2, Fp8Recipe, recipe_from_config
from megatron_sffn.fp8.scaling import dequantize, quantize
from megatron_sffn.structured.ops import apply_product, block_diag_matmul

TENSORWISE = Fp8Recipe("tensorwise", E5M2)
ROWWISE = Fp8Recipe("rowwise", E4M3)


def _rel(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


# -- scaling ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_quantize_uses_the_whole_range_and_round_trips(dtype):
    t = torch.randn(64, 48) * 1e-3  # far below FP8's unit: without a scale most values would flush to 0
    q, inv = quantize(t, dtype)
    assert q.dtype == dtype and inv.dtype == torch.float32 and inv.dim() == 0
    assert q.float().abs().max() == torch.finfo(dtype).max  # the amax lands on the format's max
    bits = 3 if dtype == E4M3 else 2
    assert _rel(dequantize(q, inv), t) < 2.0 ** -bits


def test_rowwise_scales_each_row_on_its_own():
    t = torch.randn(8, 32)
    t[3] *= 1e4  # an outlier row must not take the others' resolution
    q, inv = quantize(t, E4M3, dim=1)
    assert inv.shape == (8, 1)
    assert (q.float().abs().amax(dim=1) == torch.finfo(E4M3).max).all()
    back = dequantize(q, inv)
    for row in range(8):
        assert _rel(back[row], t[row]) < 0.125
    _, tensorwise_inv = quantize(t, E4M3)
    flat = dequantize(*quantize(t, E4M3))
    assert tensorwise_inv.dim() == 0 and _rel(flat[0], t[0]) > _rel(back[0], t[0])


def test_zero_tensor_gives_zeros_and_a_finite_scale():
    q, inv = quantize(torch.zeros(16, 16), E4M3)
    assert torch.isfinite(inv) and (q.float() == 0).all()


def test_values_beyond_the_scale_saturate_instead_of_overflowing():
    t = torch.randn(16, 16)
    q, inv = quantize(t, E4M3)
    # reuse this scale for a tensor 10x larger (what a stale scale would meet): no inf, no nan
    scale = 1.0 / inv
    q2 = (t.float() * 10 * scale).clamp(-448, 448).to(E4M3)
    assert torch.isfinite(q2.float()).all()


# -- products ----------------------------------------------------------------------------

def _grads(fn, x, w, g):
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    y = fn(x, w)
    y.backward(g.to(y.dtype))
    return y, x.grad, w.grad


@pytest.mark.parametrize("recipe", [TENSORWISE, ROWWISE], ids=["tensorwise", "rowwise"])
@pytest.mark.parametrize("shape", [(64, 32), (2, 32, 16)], ids=["dense", "block-diagonal"])
def test_fp8_product_and_its_gradients_follow_float32(recipe, shape):
    torch.manual_seed(0)
    x = torch.randn(4, 16, 32).to(torch.bfloat16)
    w = (torch.randn(*shape) * 0.05).to(torch.bfloat16)
    g = torch.randn(4, 16, shape[0] if len(shape) == 2 else shape[0] * shape[1])
    y, gx, gw = _grads(lambda a, b: fp8_product(a, b, recipe), x, w, g)
    ref = (lambda a, b: torch.nn.functional.linear(a, b)) if len(shape) == 2 else block_diag_matmul
    y32, gx32, gw32 = _grads(ref, x.float(), w.float(), g)
    assert y.dtype == gx.dtype == gw.dtype == torch.bfloat16
    assert y.shape == y32.shape and gx.shape == gx32.shape and gw.shape == gw32.shape
    # e4m3 keeps 3 mantissa bits, e5m2 2: ~4% (forward), ~6-7% (e5m2 gradients) relative error
    assert _rel(y, y32) < 0.06
    assert _rel(gx, gx32) < 0.1 and _rel(gw, gw32) < 0.1
    # and it really ran in FP8: bf16 alone is ~100x closer
    y16, _, _ = _grads(ref, x, w, g)
    assert _rel(y, y32) > 5 * _rel(y16, y32)


def test_fp8_product_leaves_shapes_it_cannot_run_to_bf16():
    w = torch.randn(64, 32, dtype=torch.bfloat16)
    assert fp8_product(torch.randn(3, 32, dtype=torch.bfloat16), w, TENSORWISE) is None  # 3 tokens
    assert fits(16, 32, 64) and not fits(16, 24, 64) and not fits(0, 32, 64)
    w.fp8_recipe = TENSORWISE
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    assert torch.equal(apply_product(x, w), torch.nn.functional.linear(x, w))  # the decode-sized call


def test_apply_product_follows_the_weight_tag():
    x = torch.randn(32, 32, dtype=torch.bfloat16)
    w = torch.randn(64, 32, dtype=torch.bfloat16) * 0.05
    plain = apply_product(x, w)
    w.fp8_recipe = TENSORWISE
    tagged = apply_product(x, w)
    assert torch.equal(tagged, fp8_product(x, w, TENSORWISE)) and not torch.equal(tagged, plain)


def test_fp8_products_compile_without_graph_breaks():
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    w = torch.nn.Parameter((torch.randn(64, 32) * 0.05).to(torch.bfloat16))
    blocks = torch.nn.Parameter((torch.randn(2, 16, 32) * 0.05).to(torch.bfloat16))
    w.fp8_recipe = blocks.fp8_recipe = TENSORWISE

    def f(x):
        return apply_product(apply_product(x, w), blocks)

    x = torch.randn(32, 32, dtype=torch.bfloat16, requires_grad=True)
    eager = f(x)
    eager.sum().backward()
    want = (x.grad.clone(), w.grad.clone(), blocks.grad.clone())
    x.grad = w.grad = blocks.grad = None
    compiled = torch.compile(f)(x)
    compiled.sum().backward()
    assert not counters["graph_break"]
    assert torch.allclose(compiled.float(), eager.float(), rtol=2e-2, atol=2e-2)
    for got, ref in zip((x.grad, w.grad, blocks.grad), want):
        assert _rel(got, ref) < 2e-2


# -- dispatch ----------------------------------------------------------------------------

def test_crossovers_keep_thin_or_small_products_in_bf16():
    big, width = dispatch.MIN_TOKENS, dispatch.MIN_WIDTH
    assert dispatch.why_not(big, 2 * width, 4 * width, "auto") is None
    assert "tokens" in dispatch.why_not(big // 2, 2 * width, 4 * width, "auto")
    assert "wide" in dispatch.why_not(big, width // 2, 4 * width, "auto")
    assert dispatch.why_not(big // 2, width // 2, 4 * width, "all") is None
    assert "16" in dispatch.why_not(big, 24, 4 * width, "all")
    # block-diagonal factors: measured slower in FP8 at every size (one cast per block)
    assert "block-diagonal" in dispatch.why_not(big, 2 * width, 4 * width, "auto", block_diagonal=True)
    assert dispatch.why_not(big, 2 * width, 4 * width, "all", block_diagonal=True) is None


def test_auto_on_a_1p3b_model_puts_attention_and_dense_ffns_in_fp8_and_keeps_lowrank_factors_bf16():
    from megatron_sffn.model.gpt import GPTModel
    cfg = load_config("configs/1p3b_lowrank.json", ["model.num_layers=2"])
    with torch.device("meta"):
        model = GPTModel(cfg.model)
    choices = dispatch.assign_fp8(model, TENSORWISE, tokens=8 * cfg.model.seq_length)
    by_role = {c.role: c.fp8 for c in choices}
    assert by_role["attn.qkv.weight"] and by_role["attn.proj.weight"] and by_role["ffn.fc1.weight"]
    assert not by_role["ffn.fc1.weight_u"] and not by_role["ffn.fc2.weight_v"]


def _tiny_model(kind="lowrank", guided=False):
    from megatron_sffn.model.gpt import GPTModel
    shape = {"dense": ["model.ffn.rank=null", "self_guided.enabled=false"], "lowrank": ["model.ffn.rank=32"],
             "blockdense": ["model.ffn.rank=32", "model.ffn.blocks=4"],
             "blockshuffle": ["model.ffn.rank=null", "model.ffn.blocks=4"]}[kind]
    cfg = load_config("configs/tiny_demo.json", [f"model.ffn.kind={kind}", *shape])
    return GPTModel(cfg.model, guided=guided), cfg


@pytest.mark.parametrize("kind", ["dense", "lowrank", "blockdense", "blockshuffle"])
def test_assign_tags_every_gemm_weight_and_nothing_else(kind):
    model, _ = _tiny_model(kind, guided=kind != "dense")
    choices = dispatch.assign_fp8(model, TENSORWISE, tokens=1024, layers="all")
    tagged = {n for n, p in model.named_parameters() if getattr(p, "fp8_recipe", None) is not None}
    assert tagged == {c.name for c in choices if c.fp8} and tagged
    assert all("embedding" not in n and "norm" not in n and not n.endswith("bias") for n in tagged)
    roles = {c.role for c in choices}
    assert {"attn.qkv.weight", "attn.proj.weight"} <= roles
    if kind != "dense":
        assert any(".guide." in r for r in roles)  # the guide branch runs FP8 too
    dispatch.assign_fp8(model, None, tokens=1024)
    assert not any(getattr(p, "fp8_recipe", None) for p in model.parameters())


def test_auto_keeps_a_narrow_bottleneck_in_bf16_and_says_why():
    model, _ = _tiny_model("lowrank")
    choices = dispatch.assign_fp8(model, TENSORWISE, tokens=dispatch.MIN_TOKENS, layers="auto")
    line = dispatch.summary(choices)
    assert "bf16: " in line and "wide <" in line and f"0 of {len(choices)}" in line


def test_summary_counts_and_groups_roles():
    choices = [dispatch.Fp8Choice("blocks.0.attn.qkv.structure.weight", (96, 64), True, ""),
               dispatch.Fp8Choice("blocks.1.attn.qkv.structure.weight", (96, 64), True, ""),
               dispatch.Fp8Choice("blocks.1.ffn.fc1.structure.weight_v", (16, 64), False, "16 wide < 1024")]
    line = dispatch.summary(choices)
    assert line.startswith("2 of 3 GEMM weights in FP8") and "FP8: attn.qkv.weight" in line
    assert "bf16: ffn.fc1.weight_v (16 wide < 1024)" in line


# -- config and device -----------------------------------------------------------------

def _cfg(*overrides):
    return load_config("configs/tiny_demo.json", ["training.precision=bf16", *overrides])


def test_recipe_from_config_defaults():
    assert recipe_from_config(_cfg().training.fp8) == Fp8Recipe("tensorwise", E5M2)
    rowwise = recipe_from_config(_cfg("training.fp8.scaling=rowwise").training.fp8)
    assert rowwise == Fp8Recipe("rowwise", E4M3) and "rowwise" in rowwise.describe()


@pytest.mark.parametrize("overrides,named", [
    (["training.fp8.scaling=blockwise"], "training.fp8.scaling"),
    (["training.fp8.grad_format=e3m4"], "training.fp8.grad_format"),
    (["training.fp8.layers=some"], "training.fp8.layers"),
    (["training.fp8.scaling=rowwise", "training.fp8.grad_format=e5m2"], "training.fp8.grad_format"),
    (["training.fp8.enabled=true", "training.precision=fp32"], "training.precision"),
])
def test_bad_fp8_config_is_one_error_naming_the_key(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        _cfg(*overrides)


def test_fp8_is_refused_without_fp8_tensor_cores(monkeypatch):
    monkeypatch.delenv(CPU_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "training.fp8.enabled" in fp8_problem() and "H100" in fp8_problem()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100-SXM4-80GB")
    assert "A100" in fp8_problem() and "8.0" in fp8_problem()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    assert fp8_problem() is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(CPU_ENV, "1")
    assert fp8_problem() is None


def test_cli_flags_set_the_section():
    from megatron_sffn.training.cli import parse
    _, overrides = parse(["--config", "x.json", "--fp8", "--fp8-scaling", "rowwise"])
    assert "training.fp8.enabled=true" in overrides and 'training.fp8.scaling="rowwise"' in overrides
    _, overrides = parse(["--config", "x.json", "--no-fp8"])
    assert "training.fp8.enabled=false" in overrides
