"""training.fp8.keep_casts (megatron_sffn/fp8/keep_casts.py): a compiled block's backward reuses the
forward's FP8 casts instead of making them again. What a block saves for backward is read
through autograd's saved-tensor hooks (what the compiled function hands to save_for_backward);
the products run on the CPU through torch's _scaled_mm (MEGATRON_SFFN_FP8_ON_CPU)."""
import pytest
import torch

from megatron_sffn.config import ConfigError, load_config
from megatron_sffn.fp8 import dispatch
from megatron_sffn.fp8.device import CPU_ENV
from megatron_sffn.fp8.keep_casts import FP8_DTYPES
from megatron_sffn.fp8.recipe import E4M3, E5M2, Fp8Recipe
from megatron_sffn.model.compile import compile_blocks
from megatron_sffn.model.gpt import GPTModel
from megatron_sffn.model.init import initialize_piece

SHAPES = {"dense": ["model.ffn.kind=dense", "model.ffn.rank=null", "model.num_layers=1"],
          # layer 0 dense, layer 1 LowRank: its factors U and V are FP8 products of their own
          "lowrank": ["model.num_layers=2"]}


def _model(kind="dense", grad_format=E5M2):
    """(model, FP8 weights): every GEMM weight of the blocks in FP8, each product saving its input's
    and its weight's cast in eager."""
    cfg = load_config("configs/tiny_demo.json", ["self_guided.enabled=false", *SHAPES[kind]])
    model = GPTModel(cfg.model)
    initialize_piece(model, "model", seed=0, std=0.02, ffn_init="paper", device="cpu")
    model = model.bfloat16()
    choices = dispatch.assign_fp8(model, Fp8Recipe("tensorwise", grad_format), tokens=1024, layers="all")
    return model, sum(c.fp8 for c in choices)


def _rel(got, want):
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def _step(model, tokens):
    """(FP8 tensors saved for backward, the gradients) of one forward and backward."""
    saved = []

    def pack(t):
        saved.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(tokens).float()
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return sum(d in FP8_DTYPES for d in saved), grads


@pytest.mark.parametrize("kind,grad_format", [("dense", E5M2), ("dense", E4M3), ("lowrank", E5M2)],
                         ids=["dense-e5m2-gradients", "dense-e4m3-gradients", "lowrank"])
def test_compiled_block_saves_the_forward_casts_only_when_asked_and_computes_the_same(monkeypatch, kind, grad_format):
    monkeypatch.setenv(CPU_ENV, "1")
    tokens = torch.randint(0, 100, (4, 256))
    eager, fp8_weights = _model(kind, grad_format)
    eager_saved, eager_grads = _step(eager, tokens)
    assert fp8_weights >= 4 and eager_saved == 2 * fp8_weights  # the autograd functions save x and W in FP8

    results = {}
    for keep in (False, True):
        torch._dynamo.reset()
        model, _ = _model(kind, grad_format)
        compile_blocks(model, keep_fp8_casts=keep)
        _step(model, tokens)  # compiles
        results[keep] = _step(model, tokens)
    (default_saved, default_grads), (kept_saved, kept_grads) = results[False], results[True]
    # by default the partitioner keeps bf16 tensors and casts again in backward (a dense block's
    # eight casts all; a LowRank factor's bottleneck, a GEMM output, it keeps cast); asked, it keeps
    # every forward cast (a gradient's cast, e4m3 too, is made in backward and never saved)
    assert default_saved < eager_saved and (kind != "dense" or default_saved == 0)
    assert kept_saved == eager_saved
    assert default_grads.keys() == kept_grads.keys() == eager_grads.keys()
    # the same casts; the partitions round the norms' statistics differently, so the gradients are
    # not bit for bit the default's: each must be as close to eager FP8's as the default's is
    for name, grad in kept_grads.items():
        assert _rel(grad, eager_grads[name]) <= 1.1 * _rel(default_grads[name], eager_grads[name]) + 0.01, name

def test_keep_casts_is_checked_with_the_rest_of_the_fp8_section():
    cfg = load_config("configs/tiny_demo.json", ["training.fp8.keep_casts=true"])
    assert cfg.training.fp8.keep_casts is True
    with pytest.raises(ConfigError, match="'training.fp8.keep_casts' = true needs 'training.fp8.scaling'"):
        load_config("configs/tiny_demo.json", ["training.fp8.keep_casts=true", 'training.fp8.scaling="rowwise"'])
    with pytest.raises(ConfigError, match="training.fp8.keep_casts"):
        load_config("configs/tiny_demo.json", ['training.fp8.keep_casts="yes"'])
