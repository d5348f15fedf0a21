"""Cross-entropy over logits whose vocabulary may be split across tensor-parallel ranks.

Each rank holds logits for a contiguous vocab slice. Three all-reduces of T-sized vectors
(max, target logit, sum of exponentials) give the exact loss without gathering T x V logits.

Memory and traffic: the logits stay in their own dtype (bf16 in training) and are the only
T x V tensor kept for backward. fp32 work happens on row chunks of about CHUNK_ELEMENTS, in
forward (max, then exp-sum and target logit) and in backward (softmax recomputed from the
saved log-sum-exp, minus the one-hot, times the incoming gradient, written in the logits'
dtype). The usual `logits.float()` + log_softmax path instead keeps two fp32 T x V tensors
(1 GB each for 8192 tokens x 32000) and passes over them several times.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .mappings import TensorParallel

CHUNK_ELEMENTS = 1 << 25  # 128 MiB of fp32 per chunk


def _row_chunks(rows: int, width: int, chunk_elements: int):
    step = max(1, chunk_elements // max(1, width))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group, vocab_start, chunk_elements):
        # logits: (N, V_local) any float dtype, target: (N,) global ids
        rows, vocab_local = logits.shape
        chunks = list(_row_chunks(rows, vocab_local, chunk_elements))
        row_max = torch.empty(rows, dtype=torch.float32, device=logits.device)
        for c in chunks:
            row_max[c] = logits[c].max(dim=-1).values.float()
        if group is not None:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        outside = (target < vocab_start) | (target >= vocab_start + vocab_local)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        target_logit = logits.gather(1, local_target.unsqueeze(1)).squeeze(1).float() - row_max
        target_logit.masked_fill_(outside, 0.0)
        sum_exp = torch.empty(rows, dtype=torch.float32, device=logits.device)
        for c in chunks:
            sum_exp[c] = (logits[c].float() - row_max[c].unsqueeze(-1)).exp_().sum(dim=-1)
        if group is not None:
            dist.all_reduce(target_logit, group=group)
            dist.all_reduce(sum_exp, group=group)
        log_sum = sum_exp.log_()
        ctx.save_for_backward(logits, local_target, outside, row_max.add_(log_sum))
        ctx.chunk_elements = chunk_elements
        return log_sum - target_logit

    @staticmethod
    def backward(ctx, grad_loss):
        logits, local_target, outside, log_sum_exp = ctx.saved_tensors
        grad = torch.empty_like(logits)
        rows = torch.arange(logits.shape[0], device=logits.device)
        inside = (~outside).to(torch.float32)
        for c in _row_chunks(logits.shape[0], logits.shape[1], ctx.chunk_elements):
            softmax = (logits[c].float() - log_sum_exp[c].unsqueeze(-1)).exp_()
            softmax[rows[: c.stop - c.start], local_target[c]] -= inside[c]
            grad[c] = softmax.mul_(grad_loss[c].float().unsqueeze(-1))
        return grad, None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, tp: Optional[TensorParallel],
                                 chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Per-token loss (float32). logits (..., V / tp) in any dtype, target (...) of global ids."""
    flat = logits.reshape(-1, logits.shape[-1])
    flat_target = target.reshape(-1)
    enabled = tp is not None and tp.enabled
    loss = _ChunkedCrossEntropy.apply(flat, flat_target, tp.group if enabled else None,
                                      tp.rank * flat.shape[-1] if enabled else 0, chunk_elements)
    return loss.view(target.shape)
