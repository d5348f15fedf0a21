"""The middle of a GELU FFN as one autograd function: p = gelu(z W1^T + b) applied to fc2's
first factor W2, where W1 is fc1's last factor and W2 fc2's first (dense or block-diagonal).

Forward: one Triton GEMM computes z W1^T and, in its epilogue, u = . + b and h = gelu(u),
writing both (u for backward, h for the next product); cuBLAS then applies W2 to h.
Backward: one Triton GEMM computes dh = dp W2 and, in its epilogue, du = dh * gelu'(u) and
the bias gradient's partial column sums, so dh never reaches memory; cuBLAS does the
weight gradients and dz. Compared with separate ops this saves, per call, one read of the
f-wide pre-activation in forward and a write and a read of the f-wide dh in backward.
On the H100 the Triton GEMMs lose more than that to cuBLAS (docs/performance.md), so the
dispatch runs this only when asked (SFFN_FFN_PATH=fused).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import products
from .gemm import BIAS_GELU, GELU_BWD, batched_matmul, pick_tile


class _GeluBridge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, w1, bias, w2, dtype):
        ctx.in_dtypes = (z.dtype, w1.dtype, bias.dtype if bias is not None else None, w2.dtype)
        lead = z.shape[:-1]
        with torch.autocast(z.device.type, enabled=False):
            z2 = z.reshape(-1, z.shape[-1]).to(dtype).contiguous()
            w1c, w2c = w1.to(dtype), w2.to(dtype)
            tokens = z2.shape[0]
            u = torch.empty(tokens, products.out_features(w1c), device=z.device, dtype=dtype)
            h = torch.empty_like(u)
            a, b = products.forward_operands(z2, w1c)
            batched_matmul(a, b, products.output_view(u, w1c), epilogue=BIAS_GELU,
                           aux=products.output_view(h, w1c), bias=bias, tile=pick_tile(*a.shape, b.shape[2]))
            p = products.product(h, w2c)
        ctx.save_for_backward(z2, w1c, u, h, w2c, bias)
        ctx.lead = lead
        return p.reshape(*lead, p.shape[-1])

    @staticmethod
    def backward(ctx, grad_p):
        z2, w1c, u, h, w2c, bias = ctx.saved_tensors
        z_dtype, w1_dtype, b_dtype, w2_dtype = ctx.in_dtypes
        need_z, need_w1, need_b, need_w2 = ctx.needs_input_grad[:4]
        with torch.autocast(grad_p.device.type, enabled=False):
            g = grad_p.reshape(-1, grad_p.shape[-1]).to(u.dtype).contiguous()
            grad_u = torch.empty_like(u)
            a, b = products.input_grad_operands(g, w2c)
            grad_b = batched_matmul(a, b, products.input_view(grad_u, w2c), epilogue=GELU_BWD,
                                    aux=products.input_view(u, w2c), bias=bias if need_b else None,
                                    tile=pick_tile(*a.shape, b.shape[2]))
            grad_w2 = products.weight_grad(g, h, w2c).to(w2_dtype) if need_w2 else None
            grad_w1 = products.weight_grad(grad_u, z2, w1c).to(w1_dtype) if need_w1 else None
            grad_z = None
            if need_z:
                grad_z = products.input_grad(grad_u, w1c).to(z_dtype).reshape(*ctx.lead, z2.shape[-1])
        if grad_b is not None:
            grad_b = grad_b.to(b_dtype)
        return grad_z, grad_w1, grad_b, grad_w2, None


def gelu_bridge(z: torch.Tensor, w1: torch.Tensor, bias: Optional[torch.Tensor], w2: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    """product(gelu(product(z, w1) + bias), w2), the products computed in `dtype` (16-bit)."""
    return _GeluBridge.apply(z, w1, bias, w2, dtype)
