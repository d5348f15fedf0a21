"""Cross-entropy over logits whose vocabulary may be split across tensor-parallel ranks.

Each rank holds logits for a contiguous vocab slice. Three all-reduces of T-sized vectors
(max, target logit, sum of exponentials) give the exact loss without gathering T x V logits.

Memory and traffic: the logits stay in their own dtype (bf16 in training) and are the only
T x V tensor kept for backward. fp32 work happens on row chunks of about CHUNK_ELEMENTS, in
forward (max, then exp-sum and target logit) and in backward (softmax recomputed from the
saved log-sum-exp, minus the one-hot, times the incoming gradient, written in the logits'
dtype). The usual `logits.float()` + log_softmax path instead keeps two fp32 T x V tensors
(1 GB each for 8192 tokens x 32000) and passes over them several times. With
training.compile both passes are compiled instead (one fused kernel each, see _FUSED).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from .mappings import TensorParallel

CHUNK_ELEMENTS = 1 << 25  # 128 MiB of fp32 per chunk

# With training.compile the two T x V passes run as torch.compile'd functions over all rows at
# once: Inductor fuses the fp32 upcast, exp and sum (forward) and the exp, one-hot, scale and
# bf16 cast (backward) into one kernel each, so no fp32 T x V tensor exists even briefly and
# each pass reads the bf16 logits once. (sum_exp, grad) or None for the eager chunked loops.
_FUSED = None


def _sum_exp_rows(logits: torch.Tensor, row_max: torch.Tensor) -> torch.Tensor:
    return (logits.float() - row_max.unsqueeze(-1)).exp().sum(dim=-1)


def _softmax_grad_rows(logits, log_sum_exp, local_target, inside, grad_loss) -> torch.Tensor:
    """(softmax - one_hot(target) where the target is in this slice) * grad, in logits' dtype."""
    columns = torch.arange(logits.shape[-1], device=logits.device)
    hit = (columns.unsqueeze(0) == local_target.unsqueeze(-1)) & inside.unsqueeze(-1)
    softmax = (logits.float() - log_sum_exp.unsqueeze(-1)).exp()
    return ((softmax - hit.float()) * grad_loss.float().unsqueeze(-1)).to(logits.dtype)


def use_compiled_passes(enabled: bool = True) -> None:
    """Run the loss's two T x V passes through torch.compile (set by training.compile)."""
    global _FUSED
    if not enabled:
        _FUSED = None
    elif _FUSED is None:  # kept across engine rebuilds (the guide drop): no second compilation
        _FUSED = (torch.compile(_sum_exp_rows, dynamic=False), torch.compile(_softmax_grad_rows, dynamic=False))


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
        row_max = logits.max(dim=-1).values.float()  # in logits' dtype: no fp32 copy
        if group is not None:
            dist.all_reduce(row_max, op=dist.ReduceOp.MAX, group=group)
        outside = (target < vocab_start) | (target >= vocab_start + vocab_local)
        local_target = (target - vocab_start).masked_fill(outside, 0)
        target_logit = logits.gather(1, local_target.unsqueeze(1)).squeeze(1).float() - row_max
        target_logit.masked_fill_(outside, 0.0)
        if _FUSED is not None:
            sum_exp = _FUSED[0](logits, row_max)
        else:
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
        if _FUSED is not None:
            return _FUSED[1](logits, log_sum_exp, local_target, ~outside, grad_loss), None, None, None, None
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
