"""Full (unsharded) tensors from their tensor- and pipeline-parallel pieces.

Every parameter carries `tp_split_dim` (None: replicated on the tensor ranks; else the dim
along which the ranks' shards concatenate in rank order). Gathering is therefore generic:
all-gather the shards within the tensor group, then exchange the stages' dictionaries
within the pipeline group. Used by tests (every layout against one process) and by
checkpoint tools; it moves whole tensors, so it is not a training-time operation.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn

from .mappings import TensorParallel


def mark_tensor_parallel_params(module: nn.Module, tp: TensorParallel) -> None:
    """Tag sharded parameters the way DeepSpeed recognises them (`tensor_model_parallel`).

    DeepSpeed's gradient norm counts a parameter on every tensor rank when it is tagged and
    only on tensor rank 0 otherwise, so the norm counts each replicated tensor once.
    """
    for param in module.parameters():
        param.tensor_model_parallel = tp.size > 1 and getattr(param, "tp_split_dim", None) is not None


def gather_tensor_parallel(shards: Sequence[Tuple[torch.Tensor, Optional[int]]], tp: TensorParallel
                           ) -> List[torch.Tensor]:
    """Full tensors from this rank's (shard, split_dim) pairs, with ONE all-gather.

    Every tensor rank holds shards of the same shapes in the same order, so the split
    shards travel as one flat fp32 buffer (lossless for bf16/fp16) and are cut back apart.
    """
    full = [t.detach().clone() for t, _ in shards]
    split = [i for i, (_, dim) in enumerate(shards) if dim is not None]
    if tp.size == 1 or not split:
        return full
    flat = torch.cat([shards[i][0].detach().reshape(-1).float() for i in split])
    gathered = torch.empty(tp.size * flat.numel(), dtype=flat.dtype, device=flat.device)
    dist.all_gather_into_tensor(gathered, flat, group=tp.group)
    gathered = gathered.view(tp.size, flat.numel())
    offset = 0
    for i in split:
        local, dim = shards[i]
        pieces = [gathered[r, offset: offset + local.numel()].view(local.shape) for r in range(tp.size)]
        full[i] = torch.cat(pieces, dim=dim).to(local.dtype)
        offset += local.numel()
    return full


def merge_over_pipeline(local: Dict[str, torch.Tensor], pipe_group, pipe_size: int) -> Dict[str, torch.Tensor]:
    """Union of the stages' {name: tensor} dictionaries, on every stage (tensors go via CPU)."""
    if pipe_size == 1:
        return dict(local)
    on_cpu = {k: v.cpu() for k, v in local.items()}
    everyone = [None] * pipe_size
    dist.all_gather_object(everyone, on_cpu, group=pipe_group)
    merged: Dict[str, torch.Tensor] = {}
    for part in everyone:
        merged.update(part)
    device = next(iter(local.values())).device if local else torch.device("cpu")
    return {k: v.to(device) for k, v in merged.items()}
