#!/usr/bin/env python
"""Pretrain a GPT with structured FFNs and self-guided training.

    deepspeed launchers/pretrain.py --config 1p3b_lowrank.json [--override k=v ...]
    deepspeed launchers/pretrain.py --config 1p3b_lowrank.json --layout auto
    torchrun --nproc_per_node 8 launchers/pretrain.py --config ...
    mpirun -n 16 python launchers/pretrain.py --config ...

Thin on purpose: parse arguments, load and validate the config (and with --layout auto ask
the planner for its layout), check what one rank can check alone before the rendezvous, then
hand the config to training.run. A problem found before the rendezvous is one line from one
rank (training/early_errors.py), exit 2.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.config import ConfigError, apply_overrides, config_from_dict, read_config_file  # noqa: E402
from megatron_sffn.training.checkpointing import CheckpointError  # noqa: E402
from megatron_sffn.training.cli import parse  # noqa: E402
from megatron_sffn.training.early_errors import launch_world_size, report  # noqa: E402


def build_config(args, overrides, world_size):
    """(config, extra banner lines): the config file with the command line's overrides, laid
    out by the planner under --layout auto."""
    raw = read_config_file(args.config)
    if args.layout != "auto":
        return config_from_dict(raw, overrides, world_size=world_size), []
    import torch

    from megatron_sffn.training.auto_layout import EXPLICIT_FLAGS, choose_layout, gpu_memory_gb
    config_from_dict(raw, overrides)           # the user's own mistakes first, named as such
    memory, source = gpu_memory_gb(args.gpu_memory_gb)
    kept = {field: getattr(args, flag) for flag, field in EXPLICIT_FLAGS.items() if getattr(args, flag) is not None}
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", world_size)))
    choice = choose_layout(apply_overrides(raw, overrides), world_size, kept, memory, source,
                           torch.cuda.is_available(), per_node)
    cfg = config_from_dict(raw, overrides + choice.overrides(), world_size=world_size)
    choice.explain(cfg)
    return cfg, choice.banner_lines()


def main(argv=None) -> int:
    args, overrides = parse(argv)
    world_size = launch_world_size()
    try:
        cfg, notes = build_config(args, overrides, world_size)
    except ConfigError as e:
        report(str(e))
        return 2
    from megatron_sffn.training.preflight import problem_before_start
    problem = problem_before_start(cfg, world_size)   # every rank finds the same: all stop here
    if problem:
        report(problem)
        return 2
    from megatron_sffn.training.agree import StartupError
    from megatron_sffn.training.loop import TrainingStopped, run
    try:
        result = run(cfg, notes)
    except StartupError as e:  # every rank stops; rank 0 alone says why
        if e.report:
            print(f"error: {e}", file=sys.stderr)
        return 2
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"error: training stopped: {e}", file=sys.stderr)
        return 3
    from megatron_sffn.training.agree import leave_together
    leave_together()
    return 0 if result is not None else 1


if __name__ == "__main__":
    from megatron_sffn.parallel.launch import exit_process
    exit_process(main())
