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
  timers: DeepSpeed's throughput timer is off (it synchronised the device twice a step);
        `deepspeed.timers` in a config turns it back on.
  optimizer.implementation = fused (bf16, ZeRO 0 or 1): DeepSpeed's bf16 mode, ZeRO and
        clipping are off; training/master_optimizer.py keeps fp32 masters and main gradients
        itself (and shards them for ZeRO 1).
"""
from __future__ import annotations

import copy
from typing import Any, Dict

from ..config import Config, ConfigError

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
    fused = cfg.optimizer.implementation == "fused"  # MasterWeightAdamW: DeepSpeed sees a plain optimizer
    accumulation = t.global_batch_size // (t.micro_batch_size * data_parallel_size)
    ds: Dict[str, Any] = {
        "train_batch_size": t.global_batch_size,
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "gradient_clipping": 0.0 if fused else cfg.optimizer.grad_clip,
        "zero_optimization": {"stage": 0 if fused else p.zero_stage},
        "bf16": {"enabled": t.precision == "bf16" and not fused},
        "fp16": {"enabled": t.precision == "fp16"},
        "steps_per_print": NEVER_PRINT,
        "wall_clock_breakdown": False,
        # DeepSpeed's throughput timer is on by default and calls get_accelerator().synchronize()
        # at the start of every forward and the end of every step: two full device syncs per
        # micro-batch for a number nobody reads (the loop times steps itself)
        "timers": {"throughput": {"enabled": False, "synchronized": False}},
    }
    if t.precision == "fp16":
        ds["fp16"].update(loss_scale=0, initial_scale_power=16, loss_scale_window=1000, hysteresis=2,
                          min_loss_scale=1)
    if t.precision == "bf16" and p.zero_stage >= 1 and not fused:
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    if p.sequence_parallel and p.tensor > 1 and p.pipeline > 1:
        # DeepSpeed's pipeline sends 1/t of an activation per tensor rank and all-gathers it on
        # arrival, assuming the tensor ranks hold the same activation; under sequence
        # parallelism each holds its own token shard, which is already 1/t: send it whole
        ds["pipeline"] = {"pipe_partitioned": False, "grad_partitioned": False}
    return deep_merge(ds, cfg.deepspeed)


def check_engine_support(cfg: Config) -> None:
    """Combinations DeepSpeed cannot train correctly, refused before any work.

    fp16 without ZeRO under tensor parallelism: DeepSpeed's fp16 wrapper flattens the
    gradients before asking which are tensor-parallel, so its clipping norm is wrong (bf16
    there is guarded by TrainEngine instead; fp16 cannot be, its gradients carry the loss
    scale and its overflow handling must see them).

    ZeRO-3 with self-guided training: reduce_flop leaves a guide out of some steps, and
    ZeRO-3 then hands the optimizer an undefined gradient for it (measured: 1e10-sized
    values). Stages 0-2 give such a parameter a zero gradient, as the reference does.
    """
    p = cfg.parallel
    if cfg.training.precision == "fp16" and p.zero_stage == 0 and p.tensor > 1 and p.pipeline == 1:
        raise ConfigError("config key 'parallel.zero_stage' = 0 with 'training.precision' = fp16 and tensor "
                          "parallelism is not supported (DeepSpeed's fp16 optimizer then counts the gradient norm "
                          "on tensor rank 0 only); use ZeRO stage 1 or 2, or bf16")
    if cfg.parallel.zero_stage == 3 and cfg.self_guided.enabled:
        raise ConfigError("config key 'parallel.zero_stage' = 3 is not supported with 'self_guided.enabled' = "
                          "true (ZeRO-3 mishandles guides skipped by reduce_flop); use ZeRO stage 1 or 2")
