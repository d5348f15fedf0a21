"""What the launcher checks before the rendezvous: every problem one rank can find alone.

A bad run folder, a checkpoint that cannot be resumed, a missing or damaged dataset or a
tokenizer that does not fit used to surface after the rendezvous and DeepSpeed's JIT op
build (15-75 s). Each rank runs these checks itself, on the same files, so each stops on its
own with exit 2 and no rank waits for another; early_errors decides which rank prints.
The training loop asks the same questions again once the process group exists (resume_point,
open_training_data), for callers that do not come through the launcher.
"""
from __future__ import annotations

import copy
import os
from types import SimpleNamespace
from typing import Optional

from ..config import Config, check_layout


def problem_before_start(cfg: Config, world_size: int) -> Optional[str]:
    """The first problem with the run folder, its checkpoint or its data (one line), or None.
    Writes nothing, except the bundled corpus's index the first time it is used."""
    from .cli import run_dir_problem
    return (fp8_device_problem(cfg) or run_dir_problem(cfg.output.run_dir) or resume_problem(cfg, world_size)
            or data_problem(cfg))


def fp8_device_problem(cfg: Config) -> Optional[str]:
    """FP8 asked for where no FP8 tensor cores are."""
    if not cfg.training.fp8.enabled:
        return None
    from ..fp8.device import fp8_problem
    return fp8_problem()


def resume_problem(cfg: Config, world_size: int) -> Optional[str]:
    """Why the run's latest checkpoint cannot be resumed in this layout, or None."""
    from .checkpointing import CheckpointError, CheckpointManager
    from .resume_point import find_resume_point
    run_dir = cfg.output.run_dir
    sizes = SimpleNamespace(tensor_size=cfg.parallel.tensor, pipe_size=cfg.parallel.pipeline,
                            data_size=check_layout(cfg, world_size))
    ckpt = CheckpointManager(os.path.join(run_dir, "checkpoints"), cfg.training.keep_last, rank=0)
    try:   # on a copy: following the checkpoint's optimizer is the loop's to do, and to report
        find_resume_point(copy.deepcopy(cfg), sizes, ckpt, run_dir)
    except CheckpointError as error:
        return str(error)
    return None


def data_problem(cfg: Config) -> Optional[str]:
    from .data_feed import check_data_alone, samples_wanted
    from .phases import RunPhases
    return check_data_alone(cfg, samples_wanted(cfg, RunPhases.from_config(cfg)))
