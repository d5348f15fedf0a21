"""h = gelu(y + b) in one pass, and its backward in one pass with the bias gradient.

Separately, `F.gelu(y + b)` reads y and writes y + b, reads that and writes h, and its
backward reads dh and y + b to write dy, then reads dy again to sum the bias gradient. Here
the forward reads y once and writes h once; the backward reads dh and y once, writes dy
once, and sums dy's columns while it is in registers (per-program partial sums, added up
by one small deterministic reduction, so the result does not depend on scheduling).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .gelu_math import gelu, gelu_grad

_FWD_BLOCK = 4096
_BWD_BLOCK_M, _BWD_BLOCK_N = 32, 128


@triton.jit
def _bias_gelu_fwd(y_ptr, b_ptr, h_ptr, n_elements, n_cols, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    u = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        u += tl.load(b_ptr + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(h_ptr + offs, gelu(u).to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_gelu_bwd(gh_ptr, y_ptr, b_ptr, gy_ptr, part_ptr, n_rows, n_cols, rows_per_program,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    group = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < n_cols
    bias = tl.zeros((BLOCK_N,), tl.float32)
    if HAS_BIAS:
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    col_sum = tl.zeros((BLOCK_N,), tl.float32)
    first = group * rows_per_program
    for step in range(0, rows_per_program, BLOCK_M):
        rows = first + step + tl.arange(0, BLOCK_M)
        mask = (rows < n_rows)[:, None] & col_ok[None, :]
        offs = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        u = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32) + bias[None, :]
        gh = tl.load(gh_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gy = (gh * gelu_grad(u)).to(gy_ptr.dtype.element_ty)
        tl.store(gy_ptr + offs, gy, mask=mask)
        col_sum += tl.sum(tl.where(mask, gy.to(tl.float32), 0.0), axis=0)
    if HAS_BIAS:
        tl.store(part_ptr + group * n_cols + cols, col_sum, mask=col_ok)


def _row_groups(n_rows: int, n_col_blocks: int, device: torch.device) -> int:
    """Enough programs to fill the GPU a few times over, each summing many rows."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    wanted = max(1, (4 * sms + n_col_blocks - 1) // n_col_blocks)
    return max(1, min(wanted, triton.cdiv(n_rows, _BWD_BLOCK_M)))


def bias_gelu_forward(y: torch.Tensor, bias: Optional[torch.Tensor], out_dtype: torch.dtype) -> torch.Tensor:
    y = y.contiguous()
    h = torch.empty(y.shape, device=y.device, dtype=out_dtype)
    n = y.numel()
    if n:
        grid = (triton.cdiv(n, _FWD_BLOCK),)
        _bias_gelu_fwd[grid](y, bias if bias is not None else y, h, n, y.shape[-1],
                             HAS_BIAS=bias is not None, BLOCK=_FWD_BLOCK, num_warps=8)
    return h


def bias_gelu_backward(grad_h: torch.Tensor, y: torch.Tensor, bias: Optional[torch.Tensor]):
    """(dy in y's dtype, db in float32 or None)."""
    grad_h = grad_h.contiguous()
    n_cols = y.shape[-1]
    n_rows = y.numel() // n_cols if n_cols else 0
    grad_y = torch.empty_like(y)
    col_blocks = triton.cdiv(n_cols, _BWD_BLOCK_N)
    groups = _row_groups(n_rows, col_blocks, y.device) if n_rows else 1
    rows_per_program = triton.cdiv(triton.cdiv(max(n_rows, 1), groups), _BWD_BLOCK_M) * _BWD_BLOCK_M
    groups = triton.cdiv(max(n_rows, 1), rows_per_program)
    partial = torch.zeros(groups, n_cols, device=y.device, dtype=torch.float32)
    if n_rows:
        _bias_gelu_bwd[(groups, col_blocks)](grad_h, y, bias if bias is not None else y, grad_y, partial,
                                              n_rows, n_cols, rows_per_program, HAS_BIAS=bias is not None,
                                              BLOCK_M=_BWD_BLOCK_M, BLOCK_N=_BWD_BLOCK_N, num_warps=4)
    return grad_y, (partial.sum(0) if bias is not None else None)


class BiasGelu(torch.autograd.Function):
    """gelu(y + b) with b cast to y's precision in registers; grads in each input's dtype."""

    @staticmethod
    def forward(ctx, y, bias):
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(y, bias)
        return bias_gelu_forward(y, bias, y.dtype)

    @staticmethod
    def backward(ctx, grad_h):
        y, bias = ctx.saved_tensors
        grad_y, grad_b = bias_gelu_backward(grad_h.to(y.dtype), y, bias)
        if grad_b is not None:
            grad_b = grad_b.to(ctx.bias_dtype)
        return grad_y, grad_b
