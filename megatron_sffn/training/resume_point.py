"""Which checkpoint a run resumes from, and whether it can.

A checkpoint that cannot be resumed (partial, damaged, another model, layout or optimizer)
is one line naming it and the fix. `find_resume_point` needs no other rank, so the launcher
asks it before the rendezvous (training/preflight.py); `resume_point` asks it again once the
process group exists and stops every rank together.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional

from ..config import (Config, fused_optimizer_applies, optimizer_chosen_automatically, optimizer_update_chosen_because,
                      resolve_optimizer_update)
from .checkpointing import CheckpointError, CheckpointManager


def find_resume_point(cfg: Config, sizes, ckpt: CheckpointManager, run_dir: str, check_files: bool = True):
    """(tag, meta, optimizer note) of the checkpoint to resume, or (None, None, None) for a new
    run; CheckpointError if it cannot be resumed. `sizes` has tensor_size, pipe_size and
    data_size (a ParallelState, or the layout the config gives the world size)."""
    tag = ckpt.latest_tag()
    if tag is None:
        return None, None, None
    meta = ckpt.read_meta(tag)
    _check_resumable(cfg, meta, os.path.join(ckpt.directory, tag))
    note = _follow_checkpoint_optimizer(cfg, meta)
    _check_layout_resumable(cfg, sizes, meta, run_dir, tag)
    if check_files:
        ckpt.check_files(tag)
    return tag, meta, note


def resume_point(cfg: Config, state, ckpt: CheckpointManager, run_dir: str):
    """find_resume_point on every rank (rank 0 checks the files), agreed: a problem stops every
    rank with one line from rank 0, before anything is built."""
    from .agree import stop_together
    found, problem = (None, None, None), None
    try:
        found = find_resume_point(cfg, state, ckpt, run_dir, check_files=state.rank == 0)
    except CheckpointError as error:
        problem = str(error)
    stop_together(problem)
    return found


def _check_resumable(cfg: Config, meta: Dict, path: str) -> None:
    """A checkpoint resumes only into the same model, structure and self-guided plan."""
    saved = meta.get("config", {})
    for section in ("model", "self_guided"):
        if saved.get(section) != dataclasses.asdict(getattr(cfg, section)):
            diff = _first_difference(saved.get(section, {}), dataclasses.asdict(getattr(cfg, section)), section)
            raise CheckpointError(f"checkpoint {path} was written with a different '{section}' config "
                                  f"({diff}); use a new --run-dir or the config it was trained with")


def _follow_checkpoint_optimizer(cfg: Config, meta: Dict) -> Optional[str]:
    """With optimizer.implementation 'auto', resume with the implementation the checkpoint was
    written with (a run started before 'auto' chose 'fused' keeps DeepSpeed's optimizer) rather
    than refusing it. An explicit choice is left alone: the layout check then names the
    conversion. Returns a line for the run header, or None."""
    saved = (meta.get("layout") or {}).get("optimizer", "deepspeed" if meta.get("layout") else None)
    now = cfg.optimizer.implementation
    if not optimizer_chosen_automatically(cfg) or saved in (None, now):
        return None
    if saved == "fused" and not fused_optimizer_applies(cfg):
        return None  # this config cannot run it; the layout check explains
    cfg.optimizer.implementation = saved
    if optimizer_update_chosen_because(cfg).startswith("auto"):  # the update follows the implementation
        cfg.optimizer.update = "auto"
        resolve_optimizer_update(cfg)
    return (f"optimizer.implementation 'auto' follows the checkpoint: {saved} (a new run would choose {now}; "
            f"tools/convert_checkpoint.py --optimizer-implementation {now} switches it)")


def _check_layout_resumable(cfg: Config, state, meta: Dict, run_dir: str, tag: str) -> None:
    """DeepSpeed restores its own layout only; ZeRO's optimizer partitions even fix the
    data-parallel size. A different layout goes through tools/convert_checkpoint.py."""
    saved = meta.get("layout")
    if not saved:
        return
    now = {"tensor": state.tensor_size, "pipeline": state.pipe_size, "data": state.data_size,
           "zero_stage": cfg.parallel.zero_stage, "optimizer": cfg.optimizer.implementation}
    saved = {"optimizer": "deepspeed", **saved}  # written before optimizer.implementation existed
    same_model_layout = (saved["tensor"] == now["tensor"] and saved["pipeline"] == now["pipeline"]
                         and saved["optimizer"] == now["optimizer"])
    if same_model_layout and now["optimizer"] == "fused":  # saves whole tensors: any data size, ZeRO 0 or 1
        return
    zero_partitioned = saved["zero_stage"] > 0 or now["zero_stage"] > 0
    if same_model_layout and saved["zero_stage"] == now["zero_stage"] and (
            saved["data"] == now["data"] or not zero_partitioned):
        return
    def describe(layout: Dict) -> str:
        return (f"tensor {layout['tensor']} x pipeline {layout['pipeline']} x data {layout['data']}, "
                f"ZeRO {layout['zero_stage']}, optimizer.implementation {layout['optimizer']}")
    raise CheckpointError(
        f"checkpoint {os.path.join(run_dir, 'checkpoints', tag)} was written by {describe(saved)}; this run is "
        f"{describe(now)}. Reshape it first: python tools/convert_checkpoint.py --load {run_dir} --save NEW_RUN_DIR "
        f"--to deepspeed --tensor-parallel {now['tensor']} --pipeline-parallel {now['pipeline']} "
        f"--data-parallel {now['data']} --zero-stage {now['zero_stage']} --optimizer-implementation "
        f"{now['optimizer']}, then resume with --run-dir NEW_RUN_DIR")


def _first_difference(a, b, prefix: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return _first_difference(a.get(key), b.get(key), f"{prefix}.{key}")
    return f"{prefix}: saved {a!r}, now {b!r}"
