#!/usr/bin/env python
"""Pretrain a GPT with structured FFNs and self-guided training.

    deepspeed launchers/pretrain.py --config configs/1p3b_lowrank.json [--override k=v ...]
    torchrun --nproc_per_node 8 launchers/pretrain.py --config ...
    mpirun -n 16 python launchers/pretrain.py --config ...

Thin on purpose: parse arguments, load and validate the config, hand it to training.run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.config import ConfigError, load_config  # noqa: E402
from megatron_sffn.training.checkpointing import CheckpointError  # noqa: E402
from megatron_sffn.training.cli import parse, run_dir_problem  # noqa: E402


def main(argv=None) -> int:
    args, overrides = parse(argv)
    world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("OMPI_COMM_WORLD_SIZE",
                                                                  os.environ.get("PMI_SIZE", "1"))))
    try:
        cfg = load_config(args.config, overrides, world_size=world_size)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problem = run_dir_problem(cfg.output.run_dir)   # every rank sees the same folder: all stop here
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from megatron_sffn.training.agree import StartupError
    from megatron_sffn.training.loop import TrainingStopped, run
    try:
        result = run(cfg)
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
