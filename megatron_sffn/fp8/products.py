"""The products of a linear layer with FP8 operands, as autograd functions.

A linear y = x W^T runs three GEMMs per step, each through torch._scaled_mm with both
operands cast to FP8 just before it (the casts read bf16, write one byte per value; under
torch.compile they fuse with the amax and any transpose the GEMM's layout needs):

  forward         y  = x  @ W^T     x e4m3, W e4m3 (fast accumulation, as cuBLAS allows there)
  input gradient  dx = dy @ W       dy in the recipe's gradient format, W e4m3
  weight gradient dW = dy^T @ x     dy in the gradient format, x e4m3

Every operand is scaled along the contraction dimension of its own GEMM (rowwise), or as a
whole (tensorwise). What is saved for backward is what a bf16 layer saves (x and W in their
own dtype), so peak memory does not grow; outputs and gradients come back in the inputs'
dtypes. A block-diagonal factor (B, q, p) runs each block's three GEMMs the same way.
"""
from __future__ import annotations

from typing import Optional

import torch

from .recipe import E4M3, Fp8Recipe
from .scaling import quantize

# torch._scaled_mm wants every dimension of both operands a multiple of 16
ALIGNMENT = 16


def fits(tokens: int, in_features: int, out_features: int) -> bool:
    """Whether a (tokens x in) @ (in x out) product and its two gradients can run in FP8."""
    return all(n % ALIGNMENT == 0 and n > 0 for n in (tokens, in_features, out_features))


def scaled_matmul(a: torch.Tensor, b: torch.Tensor, a_dtype: torch.dtype, b_dtype: torch.dtype,
                  rowwise: bool, out_dtype: torch.dtype, fast_accum: bool = False) -> torch.Tensor:
    """a (M, K) @ b (K, N) with a cast to a_dtype and b to b_dtype, the result in out_dtype.

    cuBLAS takes the first operand row-major and the second column-major; both casts write
    those layouts, so the transposes ride on a copy that happens anyway."""
    if rowwise:
        aq, a_inv = quantize(a, a_dtype, dim=1)   # (M, 1)
        bq, b_inv = quantize(b, b_dtype, dim=0)   # (1, N)
        gemm_dtype = torch.bfloat16               # the only output rowwise scaling offers
    else:
        aq, a_inv = quantize(a, a_dtype)
        bq, b_inv = quantize(b, b_dtype)
        gemm_dtype = out_dtype
    aq = aq.contiguous()
    bq = bq.t().contiguous().t()
    out = torch._scaled_mm(aq, bq, scale_a=a_inv, scale_b=b_inv, out_dtype=gemm_dtype,
                           use_fast_accum=fast_accum)
    return out if out.dtype == out_dtype else out.to(out_dtype)


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """autocast's dtype when it is on (as a matmul would give), else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def forward_gemm(x2: torch.Tensor, weight: torch.Tensor, recipe: Fp8Recipe, out_dtype: torch.dtype) -> torch.Tensor:
    """x2 (T, in) @ W^T for W (out, in)."""
    return scaled_matmul(x2, weight.t(), E4M3, E4M3, recipe.rowwise, out_dtype, fast_accum=not recipe.rowwise)


def input_grad_gemm(g2: torch.Tensor, weight: torch.Tensor, recipe: Fp8Recipe, out_dtype: torch.dtype) -> torch.Tensor:
    """dy (T, out) @ W: the input gradient."""
    return scaled_matmul(g2, weight, recipe.grad_dtype, E4M3, recipe.rowwise, out_dtype)


def weight_grad_gemm(g2: torch.Tensor, x2: torch.Tensor, recipe: Fp8Recipe, out_dtype: torch.dtype) -> torch.Tensor:
    """dy^T (out, T) @ x (T, in): the weight gradient, contracted over the tokens."""
    return scaled_matmul(g2.t(), x2, recipe.grad_dtype, E4M3, recipe.rowwise, out_dtype)


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, recipe: Fp8Recipe, out_dtype):
        ctx.recipe, ctx.in_dtypes = recipe, (x.dtype, weight.dtype)
        x2 = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, weight)
        with torch.autocast(x.device.type, enabled=False):
            y = forward_gemm(x2, weight, recipe, out_dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        x2, weight = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = None
        with torch.autocast(grad_out.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_x = input_grad_gemm(g, weight, ctx.recipe, ctx.in_dtypes[0])
                grad_x = grad_x.reshape(*grad_out.shape[:-1], x2.shape[-1])
            if ctx.needs_input_grad[1]:
                grad_w = weight_grad_gemm(g, x2, ctx.recipe, ctx.in_dtypes[1])
        return grad_x, grad_w, None, None


class _Fp8BlockDiagonal(torch.autograd.Function):
    """y = blockdiag(blocks) x over the last dim; x (..., B*p), blocks (B, q, p) -> (..., B*q)."""

    @staticmethod
    def forward(ctx, x, blocks, recipe: Fp8Recipe, out_dtype):
        ctx.recipe, ctx.in_dtypes = recipe, (x.dtype, blocks.dtype)
        n_blocks, q, p = blocks.shape
        x3 = x.reshape(-1, n_blocks, p)
        ctx.save_for_backward(x3, blocks)
        with torch.autocast(x.device.type, enabled=False):
            ys = [forward_gemm(x3[:, b], blocks[b], recipe, out_dtype) for b in range(n_blocks)]
        return torch.stack(ys, dim=1).reshape(*x.shape[:-1], n_blocks * q)

    @staticmethod
    def backward(ctx, grad_out):
        x3, blocks = ctx.saved_tensors
        recipe = ctx.recipe
        n_blocks, q, p = blocks.shape
        g3 = grad_out.reshape(-1, n_blocks, q)
        grad_x = grad_blocks = None
        with torch.autocast(grad_out.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                parts = [input_grad_gemm(g3[:, b], blocks[b], recipe, ctx.in_dtypes[0]) for b in range(n_blocks)]
                grad_x = torch.stack(parts, dim=1).reshape(*grad_out.shape[:-1], n_blocks * p)
            if ctx.needs_input_grad[1]:
                grad_blocks = torch.stack([weight_grad_gemm(g3[:, b], x3[:, b], recipe, ctx.in_dtypes[1])
                                           for b in range(n_blocks)])
        return grad_x, grad_blocks, None, None


def fp8_recipe_of(weight: torch.Tensor) -> Optional[Fp8Recipe]:
    """The recipe dispatch.py tagged this weight with (None: the weight runs in bf16)."""
    return getattr(weight, "fp8_recipe", None)


def fp8_product(x: torch.Tensor, weight: torch.Tensor, recipe: Fp8Recipe) -> Optional[torch.Tensor]:
    """x @ W^T (2-D W) or blockdiag(W) x (3-D W) with FP8 operands; None when this call's
    shape cannot run in FP8 (e.g. a decode step's few tokens), so the caller runs it in bf16."""
    tokens = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if weight.dim() == 2:
        if not fits(tokens, weight.shape[1], weight.shape[0]):
            return None
        return _Fp8Linear.apply(x, weight, recipe, output_dtype(x))
    if not fits(tokens, weight.shape[2], weight.shape[1]):
        return None
    return _Fp8BlockDiagonal.apply(x, weight, recipe, output_dtype(x))
