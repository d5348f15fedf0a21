"""The products of a linear layer with FP8 operands, as autograd functions.

A linear y = x W^T runs three GEMMs per step, each through torch._scaled_mm with both
operands cast to FP8 just before it (the casts read bf16, write one byte per value; under
torch.compile they fuse with the amax and any transpose the GEMM's layout needs):

  forward         y  = x  @ W^T     x e4m3, W e4m3 (fast accumulation, as cuBLAS allows there)
  input gradient  dx = dy @ W       dy in the recipe's gradient format, W e4m3
  weight gradient dW = dy^T @ x     dy in the gradient format, x e4m3

Tensorwise: each operand is cast once, with one scale, and the casts are reused: forward
saves x and W in FP8 (half the bytes a bf16 layer saves), backward casts dy once for both
its GEMMs; the layouts the second use needs are transposed copies of FP8 data (one byte a
value). Rowwise: every operand is scaled along the contraction dimension of its own GEMM, so
x, W and dy are each cast twice, once per axis, and forward saves x and W as they came.
Outputs and gradients come back in the inputs' dtypes. A block-diagonal factor (B, q, p)
runs each block's three GEMMs the same way. A linear's bias can ride in the forward GEMM's
epilogue (tensorwise, bf16 output: bias_epilogue_applies), as cuBLAS's addmm does in bf16, so
no separate add writes the output once more; its gradient is dy summed over the tokens.
"""
from __future__ import annotations

from typing import Optional

import torch

from .recipe import E4M3, Fp8Recipe
from .scaling import quantize

# torch._scaled_mm wants every dimension of both operands a multiple of 16
ALIGNMENT = 16


def tokens_of(x: torch.Tensor) -> int:
    """Rows of the GEMM x takes part in: every dimension but the last (0 for an empty last one)."""
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


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
        # bf16: the only output rowwise scaling offers
        return _gemm(aq, a_inv, bq, b_inv, torch.bfloat16, fast_accum).to(out_dtype)
    aq, a_inv = quantize(a, a_dtype)
    bq, b_inv = quantize(b, b_dtype)
    return _gemm(aq, a_inv, bq, b_inv, out_dtype, fast_accum)


def _gemm(aq, a_inv, bq, b_inv, out_dtype, fast_accum=False, bias=None) -> torch.Tensor:
    """Already-cast operands: aq made row-major, bq column-major (copies only where needed);
    bias (out_dtype, one value per output column), if given, added in the epilogue."""
    aq = aq if aq.is_contiguous() else aq.contiguous()
    bq = bq if bq.t().is_contiguous() else bq.t().contiguous().t()
    return torch._scaled_mm(aq, bq, scale_a=a_inv, scale_b=b_inv, bias=bias, out_dtype=out_dtype,
                            use_fast_accum=fast_accum)


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


def tensorwise_forward(x2, weight, out_dtype, bias=None):
    """(y, saved): y = x2 W^T (+ bias) from one e4m3 cast of each; saved = the casts and their scales."""
    xq, x_inv = quantize(x2, E4M3)
    wq, w_inv = quantize(weight, E4M3)
    y = _gemm(xq, x_inv, wq.t(), w_inv, out_dtype, fast_accum=True,
              bias=None if bias is None else bias.to(out_dtype))
    return y, (xq, x_inv, wq, w_inv)


def tensorwise_backward(g2, saved, recipe: Fp8Recipe, need_x: bool, need_w: bool, x_dtype, w_dtype):
    """(dx, dW) from one cast of dy and the forward's casts of x and W."""
    xq, x_inv, wq, w_inv = saved
    gq, g_inv = quantize(g2, recipe.grad_dtype)
    grad_x = _gemm(gq, g_inv, wq, w_inv, out_dtype_for(x_dtype)).to(x_dtype) if need_x else None
    grad_w = _gemm(gq.t(), g_inv, xq, x_inv, out_dtype_for(w_dtype)).to(w_dtype) if need_w else None
    return grad_x, grad_w


def out_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """A dtype _scaled_mm can write that casts to `dtype` without loss of what it holds."""
    return dtype if dtype in (torch.bfloat16, torch.float16, torch.float32) else torch.float32


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, recipe: Fp8Recipe, out_dtype, bias):
        """bias: None, or added in the epilogue (tensorwise only: bias_epilogue_applies)."""
        ctx.recipe, ctx.in_dtypes = recipe, (x.dtype, weight.dtype)
        ctx.bias_dtype = None if bias is None else bias.dtype
        x2 = x.reshape(-1, x.shape[-1])
        with torch.autocast(x.device.type, enabled=False):
            if recipe.rowwise:
                ctx.save_for_backward(x2, weight)
                y = forward_gemm(x2, weight, recipe, out_dtype)
            else:
                y, saved = tensorwise_forward(x2, weight, out_dtype, bias)
                ctx.save_for_backward(*saved)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx, grad_out):
        g = grad_out.reshape(-1, grad_out.shape[-1])
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_x = grad_w = None
        with torch.autocast(grad_out.device.type, enabled=False):
            if not ctx.recipe.rowwise:
                grad_x, grad_w = tensorwise_backward(g, ctx.saved_tensors, ctx.recipe, need_x, need_w,
                                                     *ctx.in_dtypes)
            else:
                x2, weight = ctx.saved_tensors
                if need_x:
                    grad_x = input_grad_gemm(g, weight, ctx.recipe, ctx.in_dtypes[0])
                if need_w:
                    grad_w = weight_grad_gemm(g, x2, ctx.recipe, ctx.in_dtypes[1])
        if grad_x is not None:
            grad_x = grad_x.reshape(*grad_out.shape[:-1], grad_x.shape[-1])
        grad_bias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[4]:
            grad_bias = g.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, None, None, grad_bias


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


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ W^T for a 2-D (out, in) W: in FP8 where the weight is tagged and this call's shape
    fits, else F.linear."""
    recipe = fp8_recipe_of(weight)
    y = fp8_product(x, weight, recipe) if recipe is not None else None
    return y if y is not None else torch.nn.functional.linear(x, weight)


def fp8_product(x: torch.Tensor, weight: torch.Tensor, recipe: Fp8Recipe) -> Optional[torch.Tensor]:
    """x @ W^T (2-D W) or blockdiag(W) x (3-D W) with FP8 operands; None when this call's
    shape cannot run in FP8 (e.g. a decode step's few tokens), so the caller runs it in bf16."""
    tokens = tokens_of(x)
    if weight.dim() == 2:
        if not fits(tokens, weight.shape[1], weight.shape[0]):
            return None
        return _Fp8Linear.apply(x, weight, recipe, output_dtype(x), None)
    if not fits(tokens, weight.shape[2], weight.shape[1]):
        return None
    return _Fp8BlockDiagonal.apply(x, weight, recipe, output_dtype(x))


def bias_epilogue_applies(weight: torch.Tensor, tokens: int, out_dtype: torch.dtype) -> bool:
    """Whether (tokens x in) @ W^T + b can run as one FP8 GEMM with the bias in its epilogue: a
    tagged 2-D weight, the tensorwise recipe, a bf16 output (what _scaled_mm adds a bias to) and
    a shape that fits. Asked before the caller computes the GEMM's input (a structured map's
    bottleneck), which it would otherwise compute twice."""
    recipe = fp8_recipe_of(weight)
    return (recipe is not None and not recipe.rowwise and weight.dim() == 2 and out_dtype == torch.bfloat16
            and fits(tokens, weight.shape[1], weight.shape[0]))


def linear_with_bias(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x @ W^T + b in FP8, the bias in the epilogue; only where bias_epilogue_applies."""
    return _Fp8Linear.apply(x, weight, fp8_recipe_of(weight), output_dtype(x), bias)
