"""The two kinds of factor product in a structured map, as views and cuBLAS calls with no copies.

A factor is either dense, 2-D (out, in), applied as x @ W^T, or block-diagonal, 3-D
(B, q, p), applied blockwise to x viewed (T, B, p) (ops.block_diag_matmul). The helpers
give each product's operands as (G, M, K) x (G, K, N) -> (G, M, N) strided views for the
Triton GEMM, and the cuBLAS forward, input-gradient and weight-gradient products used
around it. Activations are 2-D (T, features) and contiguous.
"""
from __future__ import annotations

import torch


def out_features(w: torch.Tensor) -> int:
    return w.shape[0] if w.dim() == 2 else w.shape[0] * w.shape[1]


def in_features(w: torch.Tensor) -> int:
    return w.shape[1] if w.dim() == 2 else w.shape[0] * w.shape[2]


def batched_view(t: torch.Tensor, blocks: int) -> torch.Tensor:
    """(T, blocks * c) seen as (blocks, T, c) without a copy."""
    rows, cols = t.shape
    return t.view(rows, blocks, cols // blocks).transpose(0, 1)


def _blocks(w: torch.Tensor) -> int:
    return 1 if w.dim() == 2 else w.shape[0]


def forward_operands(x: torch.Tensor, w: torch.Tensor):
    """(a, b) with a[g] @ b[g] = block g of x's product with w."""
    if w.dim() == 2:
        return x.unsqueeze(0), w.t().unsqueeze(0)
    return batched_view(x, w.shape[0]), w.transpose(1, 2)


def output_view(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y (T, out_features(w)) as the (G, T, n) output of forward_operands."""
    return batched_view(y, _blocks(w))


def input_grad_operands(grad: torch.Tensor, w: torch.Tensor):
    """(a, b) with a[g] @ b[g] = block g of the input gradient grad @ W."""
    if w.dim() == 2:
        return grad.unsqueeze(0), w.unsqueeze(0)
    return batched_view(grad, w.shape[0]), w


def input_view(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (T, in_features(w)) as the (G, T, k) output of input_grad_operands."""
    return batched_view(x, _blocks(w))


def product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ W^T (dense) or blockdiag(W) applied to x, through cuBLAS."""
    if w.dim() == 2:
        return torch.mm(x, w.t())
    y = torch.empty(x.shape[0], out_features(w), device=x.device, dtype=x.dtype)
    torch.bmm(*forward_operands(x, w), out=output_view(y, w))
    return y


def input_grad(grad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if w.dim() == 2:
        return torch.mm(grad, w)
    gx = torch.empty(grad.shape[0], in_features(w), device=grad.device, dtype=grad.dtype)
    torch.bmm(*input_grad_operands(grad, w), out=input_view(gx, w))
    return gx


def weight_grad(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """dL/dW for y = product(x, W) given dL/dy = grad, in W's layout."""
    if w.dim() == 2:
        return torch.mm(grad.t(), x)
    blocks = w.shape[0]
    return torch.bmm(batched_view(grad, blocks).transpose(1, 2), batched_view(x, blocks))
