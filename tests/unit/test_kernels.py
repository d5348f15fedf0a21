"""FFN fast paths (structured/kernels): the split form the kernels rely on, the dispatch,
and the Triton kernels' numerics.

The kernels run here through Triton's interpreter (CPU tensors) when Triton is installed;
the GPU benchmark (benchmarks/bench_ffn.py) checks them again in bf16 on the device. The
interpreter computes 16-bit dots correctly only for fp16, so fp16 stands in for bf16 in
the GEMM tests here. TRITON_INTERPRET must be set before Triton is first imported (its
own library functions are decorated then), hence at this module's import; it changes
nothing else, since the dispatch sends CPU tensors to the kernels only when a test asks.
"""
import os
import sys

if "triton" not in sys.modules:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import copy  # noqa: E402
import importlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest
import torch
import torch.nn.functional as F

from megatron_sffn.model.block import FeedForward
from megatron_sffn.model.init import initialize_piece
from megatron_sffn.parallel.mappings import TensorParallel
from megatron_sffn.structured import GuideState, ParallelLinear
from megatron_sffn.structured.kernels import dispatch, force_path, products
from megatron_sffn.structured.ops import apply_product

from .helpers import KINDS, tiny_model

TP1 = TensorParallel.single()
KIND_ARGS = {"dense": {}, "lowrank": {"rank": 6}, "blockdense": {"rank": 12, "blocks": 4},
             "blockshuffle": {"blocks": 4}}
KERNEL_MODULES = ("gelu_math", "gemm", "elementwise", "bridge", "shuffle")


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    assert torch.isfinite(out).all()
    return ((out - ref).norm() / ref.norm()).item()


def _linear(kind, mode, n_in, n_out, seed=0):
    lin = ParallelLinear(n_in, n_out, mode, TP1, kind=kind, **KIND_ARGS[kind])
    initialize_piece(lin, "t", seed=seed, std=0.02, ffn_init="paper", device="cpu")
    with torch.no_grad():
        lin.bias.normal_()
    return lin.double()


# -- split form and products (no Triton needed) -----------------------------------------

@pytest.mark.parametrize("kind", list(KIND_ARGS))
def test_split_form_reproduces_the_layer(kind):
    fc1 = _linear(kind, "column", 24, 48)
    fc2 = _linear(kind, "row", 48, 24, seed=1)
    x = torch.randn(5, 24, dtype=torch.float64)
    h = torch.randn(5, 48, dtype=torch.float64)
    z, w = fc1.last_product_operands(x)
    torch.testing.assert_close(fc1.add_bias(apply_product(z, w)), fc1(x), rtol=1e-12, atol=1e-12)
    p = apply_product(h, fc2.first_product_weight())
    torch.testing.assert_close(fc2.finish_from_first_product(p), fc2(h), rtol=1e-12, atol=1e-12)
    assert fc1.splittable() and fc2.splittable()


def test_guided_step_is_not_splittable():
    state = GuideState(active=True, alpha=0.5, reduce_flop=False)
    lin = ParallelLinear(24, 48, "column", TP1, kind="lowrank", rank=6, guided=True, guide_state=state)
    assert not lin.splittable()
    state.alpha = 0.0
    assert lin.splittable()


def test_bias_keeps_the_autocast_dtype():
    lin = _linear("lowrank", "column", 24, 48).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(torch.randn(3, 24))
    assert y.dtype == torch.bfloat16  # an fp32 bias must not promote the activation to fp32


@pytest.mark.parametrize("shape", [(20, 12), (4, 5, 3)])
def test_products_match_autograd(shape):
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(7, products.in_features(w), dtype=torch.float64, requires_grad=True)
    y = apply_product(x, w)
    g = torch.randn_like(y)
    y.backward(g)
    gx_ref, gw_ref = x.grad, w.grad
    y, x, w = y.detach(), x.detach(), w.detach()
    torch.testing.assert_close(products.product(x, w), y)
    torch.testing.assert_close(products.input_grad(g, w), gx_ref)
    torch.testing.assert_close(products.weight_grad(g, x, w), gw_ref)
    a, b = products.forward_operands(x, w)
    out = torch.empty_like(y)
    products.output_view(out, w).copy_(torch.bmm(a, b))
    torch.testing.assert_close(out, y)
    a, b = products.input_grad_operands(g, w)
    gx = torch.empty_like(x)
    products.input_view(gx, w).copy_(torch.bmm(a, b))
    torch.testing.assert_close(gx, gx_ref)


def test_dispatch_rules(monkeypatch):
    x = torch.randn(4096, 8)
    assert dispatch.choose_path(x, fusable=True) == "reference"  # CPU without the interpreter
    with force_path("elementwise"):
        assert dispatch.requested_path() == "elementwise"
    assert dispatch.requested_path() == "auto"
    monkeypatch.setenv("SFFN_FFN_PATH", "bogus")
    with pytest.raises(ValueError, match="SFFN_FFN_PATH"):
        dispatch.requested_path()


def test_dispatch_when_kernels_can_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "ALLOW_CPU_INTERPRETER", True)
    monkeypatch.setattr(dispatch, "_TRITON", True)
    monkeypatch.setattr(dispatch, "ELEMENTWISE_MIN_TOKENS", 16)
    x = torch.randn(64, 8).half()
    assert dispatch.choose_path(x, fusable=True) == "elementwise"  # auto: fused only on request
    assert dispatch.choose_path(x[:8], fusable=True) == "reference"  # few tokens
    with force_path("fused"):
        assert dispatch.choose_path(x, fusable=True) == "fused"
        assert dispatch.choose_path(x, fusable=False) == "elementwise"  # guided step
        assert dispatch.choose_path(x.float(), fusable=True) == "elementwise"  # fp32: no 16-bit GEMM
    with force_path("reference"):
        assert dispatch.choose_path(x, fusable=True) == "reference"
        assert not dispatch.kernels_enabled(x)
    monkeypatch.setattr(dispatch, "_compiling", lambda: True)  # Inductor fuses the plain ops itself
    assert dispatch.choose_path(x, fusable=True) == "reference"
    assert not dispatch.kernels_enabled(x)


# -- Triton kernels through the interpreter ----------------------------------------------

@pytest.fixture
def interp(monkeypatch):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("Triton was imported before this module could select its interpreter")
    if tuple(int(v) for v in np.__version__.split(".")[:2]) >= (2, 4):
        pytest.skip("Triton 3.6's interpreter needs numpy < 2.4 (int() of 1-element arrays)")
    monkeypatch.setattr(dispatch, "ALLOW_CPU_INTERPRETER", True)
    return {n: importlib.import_module(f"megatron_sffn.structured.kernels.{n}") for n in KERNEL_MODULES}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_bias_gelu_kernels(interp, dtype, tol):
    ew = interp["elementwise"]
    y = torch.randn(77, 300).to(dtype)  # rows and columns not multiples of the blocks
    b = torch.randn(300)
    gh = torch.randn(77, 300).to(dtype)
    y64, b64 = y.double().requires_grad_(), b.double().requires_grad_()
    h64 = F.gelu(y64 + b64)
    h64.backward(gh.double())
    h = ew.bias_gelu_forward(y, b, dtype)
    gy, gb = ew.bias_gelu_backward(gh, y, b)
    assert h.dtype == dtype and gy.dtype == dtype and gb.dtype == torch.float32
    assert rel_err(h, h64) < tol
    assert rel_err(gy, y64.grad) < tol
    assert rel_err(gb, b64.grad) < tol
    gy_nobias, none = ew.bias_gelu_backward(gh, y, None)
    assert none is None
    assert rel_err(gy_nobias, torch.autograd.functional.vjp(F.gelu, y.double(), gh.double())[1]) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3)])
@pytest.mark.parametrize("wshape", [(40, 32), (4, 10, 8), (3, 16, 24)])
def test_gemm_epilogues(interp, dtype, tol, wshape):
    gemm = interp["gemm"]
    tile = gemm.TileConfig(32, 32, 16, 2, 4, 2)
    w = torch.randn(*wshape).to(dtype)
    n_in, n_out, tokens = products.in_features(w), products.out_features(w), 45
    x = torch.randn(tokens, n_in).to(dtype)
    bias = torch.randn(n_out)
    # forward epilogue: u = x W^T + b, h = gelu(u)
    u = torch.full((tokens, n_out), float("nan"), dtype=dtype)  # poisoned: every element must be written
    h = torch.full_like(u, float("nan"))
    a, b = products.forward_operands(x, w)
    gemm.batched_matmul(a, b, products.output_view(u, w), epilogue=gemm.BIAS_GELU,
                        aux=products.output_view(h, w), bias=bias, tile=tile)
    u64 = products.product(x.double(), w.double()) + bias.double()
    assert rel_err(u, u64) < tol and rel_err(h, F.gelu(u64)) < tol
    # backward epilogue: du = (g W) * gelu'(u), bias grad = column sums of du
    g = torch.randn(tokens, n_out).to(dtype)
    u_in = torch.randn(tokens, n_in).to(dtype)
    du = torch.full((tokens, n_in), float("nan"), dtype=dtype)
    a, b = products.input_grad_operands(g, w)
    db = gemm.batched_matmul(a, b, products.input_view(du, w), epilogue=gemm.GELU_BWD,
                             aux=products.input_view(u_in, w), bias=bias, tile=tile)
    _, ref = torch.autograd.functional.vjp(F.gelu, u_in.double(), products.input_grad(g.double(), w.double()))
    assert rel_err(du, ref) < tol and rel_err(db, ref.sum(0)) < tol
    # plain epilogue
    y = torch.full((tokens, n_out), float("nan"), dtype=dtype)
    a, b = products.forward_operands(x, w)
    gemm.batched_matmul(a, b, products.output_view(y, w), tile=tile)
    assert rel_err(y, u64 - bias.double()) < tol


@pytest.mark.parametrize("k,n_blocks", [(2048, 4), (24, 3), (40, 8), (12, 12)])
def test_block_shuffle_kernel_matches_the_view_transpose(interp, monkeypatch, k, n_blocks):
    from megatron_sffn.structured.ops import block_shuffle
    calls = []
    real = interp["shuffle"].transpose_rows
    monkeypatch.setattr(interp["shuffle"], "transpose_rows", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(3, 19, k, requires_grad=True)
    ref = x.reshape(3, 19, k // n_blocks, n_blocks).transpose(-1, -2).reshape(3, 19, k)
    with force_path("elementwise"):
        assert dispatch.choose_path(x, fusable=False) == "elementwise"
        y = block_shuffle(x, n_blocks)
    torch.testing.assert_close(y, ref, rtol=0, atol=0)  # a permutation: exact
    g = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=0)
    assert len(calls) == 2  # the kernel ran forward and backward


def _ffn(kind):
    cfg = tiny_model(kind)
    ffn = FeedForward(cfg, layer=1, tp=TP1, guided=False, guide_state=None)
    initialize_piece(ffn, "ffn", seed=5, std=0.02, ffn_init="paper", device="cpu")
    with torch.no_grad():
        for lin in ffn.linears():
            lin.bias.normal_(0.0, 0.5)
    return ffn


def _ffn_run(ffn, x, path):
    ffn.zero_grad()
    x = x.clone().requires_grad_()
    with force_path(path):
        y = ffn(x)
    y.backward(torch.ones_like(y) * 0.1)
    return y, [x.grad] + [p.grad for p in ffn.parameters()]


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("path,dtype,tol", [("elementwise", torch.float32, 1e-5),
                                            ("fused", torch.float16, 3e-3)])
def test_feedforward_paths_match_float64(interp, kind, path, dtype, tol):
    ffn = _ffn(kind)
    ref = copy.deepcopy(ffn).double()
    ffn.to(dtype)
    x = torch.randn(2, 37, ffn.fc1.structure.in_features)
    with force_path(path):
        assert dispatch.choose_path(x.to(dtype), fusable=True) == path
    y, grads = _ffn_run(ffn, x.to(dtype), path)
    y64, grads64 = _ffn_run(ref, x.double(), "reference")
    assert y.dtype == dtype
    assert rel_err(y, y64) < tol
    for g, g64 in zip(grads, grads64):
        assert g.dtype == dtype
        assert rel_err(g, g64) < tol
