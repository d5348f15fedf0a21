"""Autograd operators that move activations into and out of the tensor-parallel region.

Vocabulary after Megatron: inside the region each rank holds a shard; at its edges
activations are either replicated (copy in, reduce out) or split along the last dimension
(scatter in, gather out). Each operator is the transpose of its pair in backward.

All operators accept several tensors and move them with ONE collective (flatten, concat,
reduce, split): a guided structured layer reduces its structured and guide partials together.
With no group (tensor-parallel size 1) every operator is the identity and costs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .collectives import gather_last_dim, sum_over_group


@dataclass(frozen=True)
class TensorParallel:
    """Where this rank sits in its tensor-parallel group. size 1 means no communication.

    sequence_parallel: outside the tensor-parallel regions each rank holds 1/size of the
    tokens (parallel/sequence.py); it changes nothing at size 1.
    """
    group: Optional[object] = None
    size: int = 1
    rank: int = 0
    sequence_parallel: bool = False

    @staticmethod
    def single() -> "TensorParallel":
        return TensorParallel()

    @property
    def enabled(self) -> bool:
        return self.size > 1

    @property
    def sequence_sharded(self) -> bool:
        """Activations outside the tensor-parallel regions are split along the tokens."""
        return self.enabled and self.sequence_parallel


def _all_reduce_fused(tensors: Sequence[torch.Tensor], group) -> Tuple[torch.Tensor, ...]:
    if len(tensors) == 1:
        # one copy (contiguous() then clone() made two of a strided input)
        out, _ = sum_over_group(tensors[0].clone(memory_format=torch.contiguous_format), group)
        return (out,)
    flat, _ = sum_over_group(torch.cat([t.reshape(-1) for t in tensors]), group)
    return tuple(piece.view_as(t) for piece, t in zip(flat.split([t.numel() for t in tensors]), tensors))


class _CopyToRegion(torch.autograd.Function):
    """Forward: identity. Backward: all-reduce the gradients (each rank saw a partial)."""

    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + _all_reduce_fused(grads, ctx.group)


class _ReduceFromRegion(torch.autograd.Function):
    """Forward: all-reduce the partial sums. Backward: identity."""

    @staticmethod
    def forward(ctx, group, *tensors):
        return _all_reduce_fused(tensors, group)

    @staticmethod
    def backward(ctx, *grads):
        return (None,) + grads


class _ScatterToRegion(torch.autograd.Function):
    """Forward: keep this rank's slice of the last dim. Backward: all-gather it."""

    @staticmethod
    def forward(ctx, tp, x):
        ctx.tp = tp
        return _split_last(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return None, _gather_last(grad, ctx.tp)


class _GatherFromRegion(torch.autograd.Function):
    """Forward: all-gather the last dim. Backward: keep this rank's slice."""

    @staticmethod
    def forward(ctx, tp, x):
        ctx.tp = tp
        return _gather_last(x, tp)

    @staticmethod
    def backward(ctx, grad):
        return None, _split_last(grad, ctx.tp)


# size and rank come from the TensorParallel built once at start-up, not from a process-group
# query per call
def _split_last(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    return x.chunk(tp.size, dim=-1)[tp.rank].contiguous()


def _gather_last(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    return gather_last_dim(x, tp.group, tp.size)


def copy_to_tensor_region(tp: TensorParallel, *tensors: torch.Tensor):
    if not tp.enabled:
        return tensors if len(tensors) > 1 else tensors[0]
    out = _CopyToRegion.apply(tp.group, *tensors)
    return out if len(tensors) > 1 else out[0]


def reduce_from_tensor_region(tp: TensorParallel, *tensors: torch.Tensor):
    if not tp.enabled:
        return tensors if len(tensors) > 1 else tensors[0]
    out = _ReduceFromRegion.apply(tp.group, *tensors)
    return out if len(tensors) > 1 else out[0]


def scatter_to_tensor_region(tp: TensorParallel, x: torch.Tensor) -> torch.Tensor:
    return _ScatterToRegion.apply(tp, x) if tp.enabled else x


def gather_from_tensor_region(tp: TensorParallel, x: torch.Tensor) -> torch.Tensor:
    return _GatherFromRegion.apply(tp, x) if tp.enabled else x
