"""One run read back from its own folder: the row and curves the report is made of.

Everything comes from the run folder: `sweep_record.json` (what launch.py started, how it
ended) and the TensorBoard events the training loop wrote (`val/loss`, `train/loss`,
`perf/tokens_per_s`, against the optimizer step). Tokens and training FLOPs at each step are
recomputed from the run's config with the project's accounting (model/accounting.py),
the guide's share during self-guided steps included (its expected cost a per step with
reduce_flop, as the training loop counts it), so the FLOPs axis is exact for every run
without trusting logged floats.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Tuple

from megatron_sffn.config import Config, load_config
from megatron_sffn.model.accounting import dense_equivalent, model_stats, structured_params
from megatron_sffn.model.paper import describe_ffn

from .launch import ROOT, read_record


def read_scalars(run_dir: str, tags) -> Dict[str, List[Tuple[int, float]]]:
    """tag -> [(step, value)] from run_dir/tensorboard (missing tags -> [])."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tb = os.path.join(run_dir, "tensorboard")
    out = {tag: [] for tag in tags}
    if not os.path.isdir(tb):
        return out
    acc = EventAccumulator(tb, size_guidance={"scalars": 0})
    acc.Reload()
    available = set(acc.Tags().get("scalars", []))
    for tag in tags:
        if tag in available:
            points = {e.step: e.value for e in acc.Scalars(tag)}   # a repeated step keeps its last value
            out[tag] = sorted(points.items())
    return out


def cumulative_flops(cfg: Config, steps: int) -> List[float]:
    """Training FLOPs after 0, 1, ..., `steps` optimizer steps, guides included."""
    from megatron_sffn.training.phases import RunPhases
    stats = model_stats(cfg.model)
    phases = RunPhases.from_config(cfg)
    tokens_per_step = cfg.training.global_batch_size * cfg.model.seq_length
    sg = cfg.self_guided
    total, out = 0.0, [0.0]
    for step in range(steps):
        alpha = phases.alpha(step) if sg.enabled else 0.0
        fraction = (alpha if sg.reduce_flop else 1.0) if alpha > 0 else 0.0
        total += tokens_per_step * (stats.train_flops_per_token + fraction * stats.guide_train_flops_per_token)
        out.append(total)
    return out


def ffn_shares(cfg: Config) -> Dict[str, float]:
    """FFN parameters against the dense model's: all FFN weights+biases, and the structured
    layers' matrices alone (the paper's "32%" / "63%")."""
    m = cfg.model
    stats, dense = model_stats(m), model_stats(dense_equivalent(m))
    d, f = m.hidden_size, m.ffn_hidden_size
    n_fc1 = 2 if m.activation == "swiglu" else 1
    one = n_fc1 * structured_params(m.ffn.kind, d, f, m.ffn.rank, m.ffn.blocks) + \
        structured_params(m.ffn.kind, f, d, m.ffn.rank, m.ffn.blocks)
    one_dense = (n_fc1 + 1) * d * f
    return {"ffn_percent": 100.0 * stats.ffn_params / dense.ffn_params,
            "structured_percent": 100.0 * one / one_dense}


def config_path(recorded: str) -> str:
    """A record's config, relative to the repository; records written before the sweep moved
    out of tools/ name configs/sweep/, now experiments/sweep/configs/."""
    path = os.path.join(ROOT, recorded)
    moved = os.path.join(ROOT, "experiments", "sweep", "configs", os.path.basename(recorded))
    return moved if not os.path.isfile(path) and recorded.startswith("configs/sweep/") else path


def median(values):
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else 0.5 * (values[mid - 1] + values[mid])


def summarize(run_dir: str) -> Optional[Dict]:
    """One run's row and curves, or None when the run was never launched."""
    rec = read_record(run_dir)
    if rec is None:
        return None
    row = dict(rec)
    # records from before seeds and budgets were part of the sweep: one seed, scale 1
    row.setdefault("setting", rec["name"])
    row.setdefault("seed", None)
    row.setdefault("scale", 1)
    try:
        cfg = load_config(config_path(rec["config"]), rec["overrides"])
    except Exception as error:   # a config that no longer loads: keep the record, say why
        row.setdefault("reason", f"config does not load: {error}")
        return row
    if row["seed"] is None:
        row["seed"] = cfg.training.seed
    stats, plan_steps = model_stats(cfg.model), rec.get("planned_steps")
    tokens_per_step = cfg.training.global_batch_size * cfg.model.seq_length
    row.update(ffn=describe_ffn(cfg.model.ffn), params=stats.total_params, ffn_params=stats.ffn_params,
               guided=cfg.self_guided.enabled, **ffn_shares(cfg))
    scalars = read_scalars(run_dir, ("val/loss", "train/loss", "perf/tokens_per_s"))
    last_step = max([s for s, _ in scalars["val/loss"] + scalars["train/loss"]], default=0)
    flops = cumulative_flops(cfg, max(last_step, plan_steps or 0))
    row["val_curve"] = [[s, s * tokens_per_step, flops[s], v] for s, v in scalars["val/loss"]]
    row["train_curve"] = [[s, s * tokens_per_step, v] for s, v in scalars["train/loss"]]
    rates = [v for _, v in scalars["perf/tokens_per_s"]][1:] or [v for _, v in scalars["perf/tokens_per_s"]]
    row["tokens_per_s"] = median(rates)
    if row["val_curve"]:
        step, tokens, spent, loss = row["val_curve"][-1]
        row.update(steps=step, tokens=tokens, train_flops=spent, val_loss=loss, val_ppl=math.exp(min(loss, 50.0)))
        if rec.get("status") == "ok" and plan_steps and step != plan_steps:
            row["status"], row["reason"] = "incomplete", f"last evaluation at step {step} of {plan_steps}"
    return row
