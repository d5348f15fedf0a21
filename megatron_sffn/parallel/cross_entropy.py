"""Cross-entropy over logits whose vocabulary is split across tensor-parallel ranks.

Each rank holds logits for a contiguous vocab slice. Three all-reduces of T-sized vectors
(max, target logit, sum of exponentials) give the exact loss without gathering T x V logits.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .mappings import TensorParallel


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, vocab_start):
        # logits: (N, V_local) float32, target: (N,) global ids
        vocab_local = logits.shape[-1]
        logits_max = logits.max(dim=-1).values
        dist.all_reduce(logits_max, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - logits_max.unsqueeze(-1)
        outside = (target < vocab_start) | (target >= vocab_start + vocab_local)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        rows = torch.arange(shifted.shape[0], device=shifted.device)
        target_logit = shifted[rows, local_target].masked_fill(outside, 0.0)
        dist.all_reduce(target_logit, group=group)
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        dist.all_reduce(sum_exp, group=group)
        loss = sum_exp.log() - target_logit
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), outside, local_target)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, outside, local_target = ctx.saved_tensors
        grad = softmax
        rows = torch.arange(grad.shape[0], device=grad.device)
        grad[rows, local_target] -= (~outside).to(grad.dtype)
        return grad * grad_loss.unsqueeze(-1), None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Per-token loss. logits (..., V / tp) in any dtype (computed in float32), target (...)."""
    flat = logits.reshape(-1, logits.shape[-1]).float()
    flat_target = target.reshape(-1)
    if not tp.enabled:
        loss = F.cross_entropy(flat, flat_target, reduction="none")
    else:
        loss = _VocabParallelCrossEntropy.apply(flat, flat_target, tp.group, tp.rank * flat.shape[-1])
    return loss.view(target.shape)
