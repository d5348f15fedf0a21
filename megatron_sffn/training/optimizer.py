"""AdamW with the usual GPT parameter groups, and optimizer state carried across a rebuild.

Weight decay applies to matrices (and BlockDense/BlockShuffle block stacks), never to biases
or norm weights: the rule is "decay iff the parameter has 2 or more dims", which holds for
every shard of a tensor-parallel parameter as well.

When the guides are dropped the DeepSpeed engine is rebuilt without them. ZeRO keeps
optimizer state in flat partitions, so state cannot be moved tensor by tensor; instead it is
captured per parameter *by name* in full (data-parallel-gathered) form through DeepSpeed's
safe_get_full_* accessors, and written back into the new engine the same way.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch
import torch.nn as nn

from ..config import OptimizerConfig

ADAM_STATE_KEYS = ("exp_avg", "exp_avg_sq")


def param_groups(named_params: Iterable[Tuple[str, nn.Parameter]], weight_decay: float) -> List[Dict]:
    decay, no_decay = [], []
    for _, param in named_params:
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """torch AdamW (fused on CUDA); lr is set by the training loop every step."""
    fused = torch.cuda.is_available() and all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model.named_parameters(), cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=fused or None)


def base_optimizer(ds_optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrapper (ZeRO, BF16/FP16 optimizers) or itself."""
    inner = ds_optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    return inner


def optimizer_step_count(ds_optimizer) -> int:
    """Adam's step count (the bias-correction step); 0 before the first step."""
    for state in base_optimizer(ds_optimizer).state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def partitioned(param) -> bool:
    """Whether DeepSpeed keeps this parameter's master/state in flat partitions (ZeRO, BF16 optimizer)."""
    return hasattr(param, "_hp_mapping") or hasattr(param, "ds_id")


def initialise_adam_state(ds_optimizer, step: int) -> None:
    """Create AdamW's lazily-made state now (zero moments at `step`) so it can be overwritten,
    and let DeepSpeed's wrapper link its per-parameter views to it."""
    optimizer = base_optimizer(ds_optimizer)
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state[p]
            if state:
                continue
            on_device = group.get("fused") or group.get("capturable")
            state["step"] = torch.tensor(float(step), dtype=torch.float32,
                                         device=p.device if on_device else torch.device("cpu"))
            for key in ADAM_STATE_KEYS:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group.get("amsgrad"):
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    link = getattr(ds_optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:  # ZeRO 1/2 and BF16 optimizer map each parameter into the flat state
        link()
