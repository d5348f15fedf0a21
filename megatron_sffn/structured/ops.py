"""Block-diagonal products with layouts that avoid copies, as custom autograd functions.

x is (T, B*p) and the blocks are (B, q, p): block b maps x[:, b*p:(b+1)*p] to
y[:, b*q:(b+1)*q]. Viewing x as (T, B, p) and transposing to (B, T, p) is a strided view
that batched GEMM reads directly; the output is written through a (T, B, q) buffer seen as
(B, T, q), so neither direction copies the activations. The backward does the same.

Under autocast the function casts its operands once to the autocast dtype (as a matmul
would) and hands gradients back in each input's own dtype.

While torch.compile traces, the same product is written as plain ops instead: Dynamo cannot
trace a `bmm` into a non-contiguous `out=` and broke the graph at every block-diagonal
product (BlockDense: 18 breaks in a 4-block model's three steps, BlockShuffle: 27), so each
block ran as many small graphs with eager code between them; Inductor picks the layouts of
the plain form itself.
"""
from __future__ import annotations

import torch

from ..fp8 import products as fp8
from .kernels.dispatch import choose_path


def _autocast_dtype(x: torch.Tensor):
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


class _BlockDiagMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, blocks, cast_dtype):
        ctx.in_dtypes = (x.dtype, blocks.dtype)
        if cast_dtype is not None:
            x, blocks = x.to(cast_dtype), blocks.to(cast_dtype)
        n_blocks, q, p = blocks.shape
        lead = x.shape[:-1]
        x2 = x.reshape(-1, n_blocks, p)
        tokens = x2.shape[0]
        out = torch.empty(tokens, n_blocks, q, device=x.device, dtype=x.dtype)
        with torch.autocast(x.device.type, enabled=False):
            torch.bmm(x2.transpose(0, 1), blocks.transpose(1, 2), out=out.transpose(0, 1))
        ctx.save_for_backward(x2, blocks)
        return out.reshape(*lead, n_blocks * q)

    @staticmethod
    def backward(ctx, grad_out):
        x2, blocks = ctx.saved_tensors
        n_blocks, q, p = blocks.shape
        tokens = x2.shape[0]
        g = grad_out.to(x2.dtype).reshape(tokens, n_blocks, q).transpose(0, 1)  # (B, T, q) view
        grad_x = grad_blocks = None
        with torch.autocast(x2.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                gx = torch.empty(tokens, n_blocks, p, device=x2.device, dtype=x2.dtype)
                torch.bmm(g, blocks, out=gx.transpose(0, 1))
                grad_x = gx.reshape(*grad_out.shape[:-1], n_blocks * p).to(ctx.in_dtypes[0])
            if ctx.needs_input_grad[1]:
                grad_blocks = torch.bmm(g.transpose(1, 2), x2.transpose(0, 1)).to(ctx.in_dtypes[1])
        return grad_x, grad_blocks, None


def _block_diag_matmul_traceable(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """The same product in ops torch.compile traces without a graph break (autocast casts)."""
    n_blocks, q, p = blocks.shape
    lead = x.shape[:-1]
    y = torch.bmm(x.reshape(-1, n_blocks, p).transpose(0, 1), blocks.transpose(1, 2))
    return y.transpose(0, 1).reshape(*lead, n_blocks * q)


def block_diag_matmul(x: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """y = blockdiag(blocks) @ x over the last dim. x: (..., B*p), blocks: (B, q, p) -> (..., B*q)."""
    if torch.compiler.is_compiling():
        return _block_diag_matmul_traceable(x, blocks)
    return _BlockDiagMatmul.apply(x, blocks, _autocast_dtype(x))


def block_shuffle(x: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The Monarch permutation between the two block-diagonal factors of BlockShuffle.

    x (..., k) holds B blocks of k/B; element j of the result's block b is element b of the
    input's block j, i.e. x viewed (k/B, B) is transposed, so every output block draws one
    value from every input block. On CUDA, where the FFN dispatch takes its Triton path, a
    Triton kernel does the transposing copy (kernels/shuffle.py); elsewhere PyTorch's copy.
    """
    if choose_path(x, fusable=False) != "reference":
        from .kernels.shuffle import BlockShuffle
        return BlockShuffle.apply(x, n_blocks)
    k = x.shape[-1]
    lead = x.shape[:-1]
    return x.reshape(*lead, k // n_blocks, n_blocks).transpose(-1, -2).reshape(*lead, k)


def apply_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One factor of a map: dense (out, in) as x @ W^T, or block-diagonal (B, q, p); in FP8
    where fp8/dispatch.py tagged the weight and this call's shape allows it."""
    if weight.dim() == 2:
        return fp8.linear(x, weight)
    recipe = fp8.fp8_recipe_of(weight)
    y = fp8.fp8_product(x, weight, recipe) if recipe is not None else None
    return y if y is not None else block_diag_matmul(x, weight)
