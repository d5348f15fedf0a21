"""The paper's LR schedule: linear warmup, then cosine decay to a floor.

A pure function of the optimizer step, so a resumed run needs no scheduler state.
"""
from __future__ import annotations

import math

from ..config import OptimizerConfig


def warmup_steps(opt: OptimizerConfig, total_steps: int) -> int:
    if opt.warmup_steps is not None:
        return opt.warmup_steps
    return int(round(opt.warmup_fraction * total_steps))


def learning_rate(step: int, opt: OptimizerConfig, total_steps: int) -> float:
    """LR for optimizer step `step` (0-based) of a run of `total_steps` steps."""
    warm = warmup_steps(opt, total_steps)
    floor = opt.lr * opt.min_lr_ratio
    if warm > 0 and step < warm:
        return opt.lr * (step + 1) / warm
    decay = max(1, total_steps - warm)
    progress = min(1.0, (step - warm) / decay)
    return floor + 0.5 * (opt.lr - floor) * (1.0 + math.cos(math.pi * progress))
