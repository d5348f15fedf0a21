"""AdamW with the usual GPT parameter groups, and optimizer state carried across a rebuild.

Weight decay applies to matrices (and BlockDense/BlockShuffle block stacks), never to biases
or norm weights: the rule is "decay iff the parameter has 2 or more dims", which holds for
every shard of a tensor-parallel parameter as well.

When the guides are dropped the DeepSpeed engine is rebuilt without them. ZeRO keeps
optimizer state in flat partitions whose boundaries move when parameters disappear, so
state is carried per parameter, by name, in full (data-parallel-gathered) form: DeepSpeed's
safe_get/set_full_* accessors for partitioned state, the wrapper's fp32 copies or the
torch state otherwise.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple

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
    while (not isinstance(inner, torch.optim.Optimizer) or getattr(inner, "wraps_optimizer", False)) \
            and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    return inner


def undo_initialisation_step(ds_optimizer) -> None:
    """DeepSpeed's unfused fp16/bf16 wrapper (used without ZeRO) creates Adam's state by
    taking one optimizer step with zero gradients. With torch AdamW that step counts (bias
    correction one step late: the first real update is 0.74x too small) and applies weight
    decay once to the fp32 masters. Forget that state and restore the masters from the
    module weights, which the step did not touch."""
    if type(ds_optimizer).__name__ != "FP16_UnfusedOptimizer":
        return
    base_optimizer(ds_optimizer).state.clear()
    with torch.no_grad():
        for lp_group, hp_group in zip(ds_optimizer.fp16_groups, ds_optimizer.fp32_groups):
            for lp, hp in zip(lp_group, hp_group):
                hp.copy_(lp)


def optimizer_step_count(ds_optimizer) -> int:
    """Adam's step count (the bias-correction step); 0 before the first step."""
    if hasattr(ds_optimizer, "step_count"):  # MasterWeightAdamW (collective when sharded)
        return ds_optimizer.step_count()
    for state in base_optimizer(ds_optimizer).state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def partitioned(param) -> bool:
    """Whether DeepSpeed keeps this parameter's master/state in flat partitions (ZeRO, BF16 optimizer)."""
    return hasattr(param, "_hp_mapping") or hasattr(param, "ds_id")


def master_of(param, ds_optimizer) -> torch.Tensor:
    """The tensor an unpartitioned optimizer updates for `param`: its fp32 copy under
    DeepSpeed's FP16/BF16 wrappers without ZeRO, else the parameter itself."""
    for lp_group, hp_group in zip(getattr(ds_optimizer, "fp16_groups", []), getattr(ds_optimizer, "fp32_groups", [])):
        for lp, hp in zip(lp_group, hp_group):
            if lp is param:
                return hp
    return param


def full_master(param, ds_optimizer) -> torch.Tensor:
    """fp32 master weight of `param`, whole (collective over data-parallel ranks under ZeRO)."""
    from deepspeed.utils import safe_get_full_fp32_param

    if hasattr(ds_optimizer, "full_master_of"):
        return ds_optimizer.full_master_of(param).float()
    if partitioned(param):
        return safe_get_full_fp32_param(param)
    return master_of(param, ds_optimizer).detach().float()


def full_grad(param, ds_optimizer) -> Optional[torch.Tensor]:
    """This step's gradient of `param`, whole over data-parallel ranks: the fp32 main
    gradient of MasterWeightAdamW, else what DeepSpeed's accessor finds."""
    from deepspeed.utils import safe_get_full_grad

    if hasattr(ds_optimizer, "full_grad_of"):
        return ds_optimizer.full_grad_of(param)
    return safe_get_full_grad(param)


def full_moment(param, key: str, ds_optimizer) -> Optional[torch.Tensor]:
    """Adam state `key` of `param`, whole; None before the first step."""
    from deepspeed.utils import safe_get_full_optimizer_state

    if optimizer_step_count(ds_optimizer) == 0:
        return None
    if hasattr(ds_optimizer, "full_moment_of"):
        return ds_optimizer.full_moment_of(param, key)
    if partitioned(param):
        link_optimizer_state(ds_optimizer)
        return safe_get_full_optimizer_state(param, key)
    state = base_optimizer(ds_optimizer).state.get(master_of(param, ds_optimizer), {})
    return state[key].detach() if key in state else None


@torch.no_grad()
def set_full_master(param, ds_optimizer, value: torch.Tensor) -> None:
    from deepspeed.utils import safe_set_full_fp32_param

    if hasattr(ds_optimizer, "set_master_of"):
        ds_optimizer.set_master_of(param, value)
        return
    if partitioned(param):
        safe_set_full_fp32_param(param, value)
        return
    master = master_of(param, ds_optimizer)
    master.copy_(value)
    if master is not param:
        param.copy_(value)


@torch.no_grad()
def set_full_moment(param, ds_optimizer, key: str, value: torch.Tensor) -> None:
    from deepspeed.utils import safe_set_full_optimizer_state

    if hasattr(ds_optimizer, "set_moment_of"):
        ds_optimizer.set_moment_of(param, key, value)
        return
    if partitioned(param):
        link_optimizer_state(ds_optimizer)
        safe_set_full_optimizer_state(param, value, key)
    else:
        base_optimizer(ds_optimizer).state[master_of(param, ds_optimizer)][key].copy_(value)


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
    link_optimizer_state(ds_optimizer)


def link_optimizer_state(ds_optimizer) -> None:
    """(Re)point each parameter's view into the flat Adam state (ZeRO 1/2, BF16 optimizer).

    DeepSpeed links these views once, right after the first optimizer step of the FIRST
    parameter group, when the other groups' state does not exist yet; with our two groups
    (decay / no decay) the second group's views would be missing. Linking again once all
    state exists is idempotent.
    """
    if hasattr(ds_optimizer, "_lazy_init_hp_params_optimizer_state"):
        ds_optimizer._hp_optimizer_states_linked = False
        ds_optimizer._lazy_init_hp_params_optimizer_state()


def carry_state(old_param, old_optimizer, new_param, new_optimizer) -> None:
    """Copy one parameter's fp32 master and Adam moments from one DeepSpeed optimizer to
    another (collective over data-parallel ranks under ZeRO). The new optimizer's state
    must exist (initialise_adam_state) when the old one has taken steps."""
    set_full_master(new_param, new_optimizer, full_master(old_param, old_optimizer))
    for key in ADAM_STATE_KEYS:
        value = full_moment(old_param, key, old_optimizer)
        if value is not None:
            set_full_moment(new_param, new_optimizer, key, value)
