"""The DeepSpeed config dict, derived from our typed config (never written by hand).

Batch sizes, clipping, precision and ZeRO stage come from training/optimizer/parallel;
`cfg.deepspeed` adds extra keys last (deep-merged), and config.validate already refuses
extras that would override a derived key.

Precision choices:
  bf16  parameters and activations in bf16, fp32 master weights and Adam moments in the
        optimizer. With ZeRO >= 1 gradients are accumulated across micro-batches in fp32
        (DeepSpeed's BF16 optimizer for stage 1); DeepSpeed refuses fp32 accumulation
        without ZeRO, so stage 0 accumulates in bf16.
  fp16  dynamic loss scaling (scale 2^16, halved on overflow, doubled after 1000 clean steps).
  fp32  everything in fp32 (what the CPU tests compare across layouts).
"""
from __future__ import annotations

import copy
from typing import Any, Dict

from ..config import Config

NEVER_PRINT = 10 ** 12


def deep_merge(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def deepspeed_config(cfg: Config, data_parallel_size: int) -> Dict[str, Any]:
    t, p = cfg.training, cfg.parallel
    accumulation = t.global_batch_size // (t.micro_batch_size * data_parallel_size)
    ds: Dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": p.zero_stage},
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16"},
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
    }
    if t.precision == "fp16":
        ds["fp16"].update(loss_scale=0, initial_scale_power=16, loss_scale_window=1000, hysteresis=2,
                          min_loss_scale=1)
    if t.precision == "bf16" and p.zero_stage >= 1:
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    return deep_merge(ds, cfg.deepspeed)
