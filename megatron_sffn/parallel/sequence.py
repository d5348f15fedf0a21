"""Sequence parallelism: collectives between token shards and the tensor-parallel regions.

Outside the tensor-parallel regions (norms, residual adds, the loss's input norm) each of
the t tensor ranks keeps 1/t of a micro-batch's B x S tokens (Megatron-SP). Rank r's shard
is rows [r n, (r+1) n) of the tokens flattened batch-major (n = B S / t), viewed as
(B, S / t, width). That view does not keep positions, but nothing outside the regions needs
them (every op there is per token), and the t shards gathered in rank order are the
(B, S, width) tensor again with no copy: the collective's output buffer is the result.

  gather_from_sequence        (B, S/t, w) -> (B, S, w): all-gather; backward reduce-scatter
  reduce_scatter_to_sequence  (B, S, w) partial sums -> (B, S/t, w) summed: reduce-scatter;
                              backward all-gather
Both take several tensors and move them with ONE collective (concatenated along the width),
so a guided layer gathers its structure's bottleneck and the guide's input together.

Replicated parameters used on token shards (norms, row-parallel biases, the replicated
factors of the structured maps) see only their rank's tokens, so their gradients are
partial and must be summed over the tensor group: `mark_sequence_parallel_params` tags
them; the fused optimizer sums them once per step in one collective
(training/master_optimizer.py), DeepSpeed's optimizers through the per-use hooks of
`sum_partial_gradients_with_hooks`.
"""
from __future__ import annotations

import functools
from typing import List, Sequence

import torch
import torch.nn as nn

from .collectives import gather_rows, reduce_scatter_rows, sum_over_group
from .mappings import TensorParallel


def _scaled_lead(t: torch.Tensor, factor: float) -> List[int]:
    """t's leading shape with its token dim (the one before the width) scaled by `factor`."""
    lead = list(t.shape[:-1])
    lead[-1] = int(lead[-1] * factor)
    return lead


def _side_by_side(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """(tokens, sum of widths), contiguous: one buffer for one collective."""
    if len(tensors) == 1:
        return tensors[0].reshape(-1, tensors[0].shape[-1]).contiguous()
    if len({t.dtype for t in tensors}) > 1:
        raise TypeError(f"tensors moved in one collective need one dtype, got {[t.dtype for t in tensors]}")
    return torch.cat([t.reshape(-1, t.shape[-1]) for t in tensors], dim=-1)


def _apart(buffer: torch.Tensor, like: Sequence[torch.Tensor], factor: float) -> List[torch.Tensor]:
    """Split a (tokens, widths) buffer back into views shaped like `like` with tokens scaled."""
    if len(like) == 1:  # the common case, without the lists
        t = like[0]
        return [buffer.view(*_scaled_lead(t, factor), t.shape[-1])]
    widths = [t.shape[-1] for t in like]
    pieces = buffer.split(widths, dim=-1)
    return [p.view(*_scaled_lead(t, factor), t.shape[-1]) for p, t in zip(pieces, like)]


def start_token_gather(tensors: Sequence[torch.Tensor], group, size: int, async_op: bool = False):
    """All-gather the token shards of `tensors` into one buffer: (buffer, work or None)."""
    return gather_rows(_side_by_side(tensors), group, size, async_op=async_op)


def start_token_reduce_scatter(tensors: Sequence[torch.Tensor], group, size: int, async_op: bool = False):
    """Reduce-scatter full-token partial sums of `tensors` into one shard buffer: (buffer, work or None)."""
    return reduce_scatter_rows(_side_by_side(tensors), group, size, async_op=async_op)


def gather_tokens(tensors: Sequence[torch.Tensor], group, size: int) -> List[torch.Tensor]:
    buffer, _ = start_token_gather(tensors, group, size)
    return _apart(buffer, tensors, size)


def reduce_scatter_tokens(tensors: Sequence[torch.Tensor], group, size: int) -> List[torch.Tensor]:
    buffer, _ = start_token_reduce_scatter(tensors, group, size)
    return _apart(buffer, tensors, 1.0 / size)


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, size, *tensors):
        ctx.group, ctx.size = group, size
        return tuple(gather_tokens(tensors, group, size))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None) + tuple(reduce_scatter_tokens(grads, ctx.group, ctx.size))


class _ReduceScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, size, *tensors):
        ctx.group, ctx.size = group, size
        return tuple(reduce_scatter_tokens(tensors, group, size))

    @staticmethod
    def backward(ctx, *grads):
        return (None, None) + tuple(gather_tokens(grads, ctx.group, ctx.size))


def gather_from_sequence(tp: TensorParallel, *tensors: torch.Tensor):
    """Token shards -> all tokens (one all-gather for all tensors); one tensor or a tuple."""
    out = _GatherFromSequence.apply(tp.group, tp.size, *tensors)
    return out if len(tensors) > 1 else out[0]


def reduce_scatter_to_sequence(tp: TensorParallel, *tensors: torch.Tensor):
    """Partial sums over all tokens -> this rank's summed token shard (one reduce-scatter)."""
    out = _ReduceScatterToSequence.apply(tp.group, tp.size, *tensors)
    return out if len(tensors) > 1 else out[0]


def _sum_over_group(grad: torch.Tensor, group) -> torch.Tensor:
    return sum_over_group(grad.clone(), group)[0]


def mark_sequence_parallel_params(module: nn.Module, tp: TensorParallel) -> List[nn.Parameter]:
    """Tag (`sequence_parallel = True`) and return the parameters whose gradients are partial.

    Under sequence parallelism a replicated parameter (tp_split_dim None) is applied to this
    rank's token shard only, so autograd hands it the shard's share of its gradient. Empty
    without sequence parallelism.
    """
    if not tp.sequence_sharded:
        return []
    partial = [p for p in module.parameters() if getattr(p, "tp_split_dim", None) is None]
    for param in partial:
        param.sequence_parallel = True
    return partial


def sum_partial_gradients_with_hooks(params: Sequence[nn.Parameter], tp: TensorParallel) -> None:
    """Sum each use's partial gradient over the tensor group before it is accumulated, so any
    engine or optimizer then sees the full gradient, identical on every tensor rank (one small
    all-reduce per parameter and micro-batch; the fused optimizer does one per step instead)."""
    for param in params:
        param.register_hook(functools.partial(_sum_over_group, group=tp.group))
