"""torch.compile of the transformer blocks, in place.

Blocks are compiled one by one (nn.Module.compile keeps parameter names and module
structure), so the same call serves the data-parallel model and every pipeline stage, and
activation checkpointing still wraps whole blocks. Guided blocks are left eager: their
guide weight a changes every step and the reduce_flop draw picks a branch per layer and
step, which would recompile the graphs over and over.
"""
from __future__ import annotations

import torch.nn as nn

from .block import TransformerBlock


def compile_blocks(module: nn.Module) -> int:
    """Compile every TransformerBlock under `module`; returns how many were compiled."""
    blocks = [m for m in module.modules() if isinstance(m, TransformerBlock)]
    for block in blocks:
        block.compile(dynamic=False)
    return len(blocks)
