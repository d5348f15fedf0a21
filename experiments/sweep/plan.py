"""Each run's launch plan: its config file, the overrides that set seed, budget and data, and
its planned steps and tokens; and whether an earlier call already finished exactly that run."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from megatron_sffn.config import Config, ConfigError, load_config
from megatron_sffn.model.accounting import plan_self_guided

from . import runs
from .launch import read_record


@dataclass
class RunPlan:
    run: runs.SweepRun
    config: str                                  # the setting's config file
    run_dir: str
    overrides: List[str] = field(default_factory=list)
    steps: int = 0                               # optimizer steps, a same-FLOPs repeat phase included
    tokens: int = 0
    dense_steps: int = 0                         # steps of an equal-token run at scale 1
    cfg: Optional[Config] = None                 # the effective config (overrides applied)
    error: Optional[str] = None                  # the config did not load: the run cannot start

    @property
    def name(self) -> str:
        return self.run.name


def prepare(run: runs.SweepRun, configs_dir: str, runs_dir: str, dense_tokens: int, evals: int, smoke: bool,
            user_overrides: List[str], data: Optional[Dict], keep_checkpoints: bool = False) -> RunPlan:
    """The plan of one run (a config error is recorded in .error, not raised)."""
    path = os.path.join(configs_dir, f"{run.setting.config_name}.json")
    plan = RunPlan(run, path, os.path.join(runs_dir, run.name))
    try:
        base = load_config(path)
        overrides = (runs.smoke_overrides(base) if smoke else []) + list(user_overrides)
        if data is not None:
            overrides += [f"data.paths={json.dumps([os.path.abspath(data['prefix'])])}",
                          f"data.tokenizer_model={os.path.abspath(data['tokenizer'])}",
                          f"data.split={data['data_split']}"]
        if run.seed != base.training.seed:
            overrides.append(f"training.seed={run.seed}")
        cfg = load_config(path, overrides + ["training.train_steps=1", "training.train_tokens=null"])
        per_step = cfg.training.global_batch_size * cfg.model.seq_length
        dense_steps = runs.SMOKE_DENSE_STEPS if smoke else max(1, round(dense_tokens / per_step))
        steps = runs.steps_for(run.setting, cfg, dense_steps * run.scale)
        cfg = load_config(path, overrides + [f"training.train_steps={steps}", "training.train_tokens=null"])
        total = plan_self_guided(cfg, steps).total_steps
        overrides += ["training.train_tokens=null", f"training.train_steps={steps}",
                      f"training.eval_interval={max(1, dense_steps // evals)}",
                      f"training.save_interval={10 * total + 1000}"]
        if not keep_checkpoints:
            overrides.append("output.checkpoints=false")   # a stopped run restarts: save no time writing them
        plan.overrides, plan.steps, plan.tokens, plan.dense_steps = overrides, total, total * per_step, dense_steps
        plan.cfg = load_config(path, overrides)
    except (ConfigError, ValueError, OSError) as error:
        plan.error = f"{type(error).__name__}: {error}"
    return plan


def _comparable(overrides: List[str]) -> List[str]:
    """Overrides that define the training; the data ones come from the unpacked corpus' manifest
    (paths differ between machines, and a report made elsewhere may not have it)."""
    return [o for o in overrides if not o.startswith("data.")]


def finished(plan: RunPlan) -> Optional[Dict]:
    """The record of an earlier call that finished this very run (same config, overrides and
    steps) with status ok; None when it must (re)run."""
    record = read_record(plan.run_dir)
    if not record or record.get("status") != "ok" or plan.error:
        return None
    same = (os.path.basename(record.get("config", "")) == os.path.basename(plan.config)
            and record.get("planned_steps") == plan.steps
            and _comparable(record.get("overrides", [])) == _comparable(plan.overrides))
    return record if same else None
