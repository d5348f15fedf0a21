"""Command line of launchers/pretrain.py: --config plus Megatron-style shortcut flags.

Each shortcut is sugar for one `--override`, applied after the explicit overrides, so
`--train-steps 100` and `--override training.train_steps=100` are the same thing.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional

# flag -> (config key, type)
SHORTCUTS = {
    "--run-dir": ("output.run_dir", str),
    "--train-steps": ("training.train_steps", int),
    "--train-tokens": ("training.train_tokens", int),
    "--save-interval": ("training.save_interval", int),
    "--eval-interval": ("training.eval_interval", int),
    "--log-interval": ("training.log_interval", int),
    "--tensor-parallel": ("parallel.tensor", int),
    "--pipeline-parallel": ("parallel.pipeline", int),
    "--zero-stage": ("parallel.zero_stage", int),
    "--micro-batch-size": ("training.micro_batch_size", int),
    "--global-batch-size": ("training.global_batch_size", int),
    "--seed": ("training.seed", int),
    "--exit-duration-minutes": ("training.exit_duration_minutes", float),
    "--exit-interval": ("training.exit_interval", int),
    "--lr": ("optimizer.lr", float),
    "--precision": ("training.precision", str),
    "--optimizer-implementation": ("optimizer.implementation", str),
    "--fp8-scaling": ("training.fp8.scaling", str),
    "--profile-step-start": ("training.profile.start_step", int),
    "--profile-step-end": ("training.profile.end_step", int),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """A bad flag is one line naming it (argparse's default prints the whole usage first),
    printed by one rank only: every rank of a launch parses the same command line."""

    def error(self, message: str):
        from .early_errors import report
        report(f"{message} (see {self.prog} --help)")
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(
        prog="pretrain.py",
        description="Pretrain a GPT with structured FFNs through DeepSpeed. "
                    "Launch with `deepspeed [--num_gpus N] launchers/pretrain.py --config C.json`, "
                    "torchrun, or mpirun.")
    p.add_argument("--config", required=True, help="run config JSON (see configs/)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="set any config field, e.g. --override model.ffn.rank=384 (repeatable)")
    for flag, (key, tp) in SHORTCUTS.items():
        p.add_argument(flag, type=tp, default=None, help=f"sets {key}")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the transformer blocks, or not (sets training.compile; default "
                        "'auto': on where CUDA is)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="replay the compiled blocks as CUDA graphs, or not (sets training.cuda_graphs; "
                        "default 'auto': on where CUDA is and the layout allows them)")
    p.add_argument("--fp8", action=argparse.BooleanOptionalAction, default=None,
                   help="run the attention and FFN GEMMs in FP8 where it pays (sets training.fp8.enabled; "
                        "needs an H100/H200-class GPU and bf16)")
    p.add_argument("--profile", action="store_true", default=None,
                   help="torch.profiler over steps --profile-step-start .. --profile-step-end - 1 (default "
                        "10, 12) on --profile-ranks (default 0): traces and a table in RUN_DIR/profile "
                        "(sets training.profile.enabled)")
    p.add_argument("--profile-ranks", type=int, nargs="+", default=None, metavar="RANK",
                   help="global ranks that profile (sets training.profile.ranks)")
    p.add_argument("--layout", choices=["auto"], default=None,
                   help="auto: the layout planner picks tensor, pipeline, ZeRO stage and micro-batch for the "
                        "world size and GPU memory; --tensor-parallel, --pipeline-parallel, --zero-stage, "
                        "--micro-batch-size and --sequence-parallel given beside it win")
    p.add_argument("--gpu-memory-gb", type=float, default=None,
                   help="with --layout auto: memory per GPU in GB = 2^30 bytes (default: the GPU's own)")
    p.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None,
                   help="shard norms and residuals along the sequence over the tensor group, or not "
                        "(sets parallel.sequence_parallel; default auto: on wherever --tensor-parallel > 1 "
                        "allows it)")
    p.add_argument("--no-save", action="store_true", default=None,
                   help="write no checkpoints (sets output.checkpoints=false), e.g. for benchmarks")
    p.add_argument("--data-path", nargs="+", default=None, metavar="PREFIX",
                   help="dataset prefixes, optionally weighted Megatron-style: 0.7 A 0.3 B (sets data.paths/weights)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def data_path_overrides(values: List[str]) -> List[str]:
    """`A B` -> paths; `0.7 A 0.3 B` -> paths + weights."""
    def is_number(s):
        try:
            float(s)
            return True
        except ValueError:
            return False
    if len(values) % 2 == 0 and all(is_number(v) for v in values[0::2]) and values:
        weights = [float(v) for v in values[0::2]]
        paths = values[1::2]
        return [f"data.paths={json.dumps(paths)}", f"data.weights={json.dumps(weights)}"]
    return [f"data.paths={json.dumps(values)}", "data.weights=null"]


def overrides_from_args(args: argparse.Namespace) -> List[str]:
    overrides = list(args.override)
    for flag, (key, _) in SHORTCUTS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            if key == "training.train_steps":
                overrides.append("training.train_tokens=null")
            if key == "training.train_tokens":
                overrides.append("training.train_steps=null")
            overrides.append(f"{key}={json.dumps(value)}")
    if args.compile is not None:
        overrides.append(f"training.compile={json.dumps(args.compile)}")
    if args.cuda_graphs is not None:
        overrides.append(f"training.cuda_graphs={json.dumps(args.cuda_graphs)}")
    if args.fp8 is not None:
        overrides.append(f"training.fp8.enabled={json.dumps(args.fp8)}")
    if args.profile:
        overrides.append("training.profile.enabled=true")
    if args.profile_ranks is not None:
        overrides.append(f"training.profile.ranks={json.dumps(args.profile_ranks)}")
    if args.no_save:
        overrides.append("output.checkpoints=false")
    if args.sequence_parallel is not None:
        overrides.append(f"parallel.sequence_parallel={json.dumps(args.sequence_parallel)}")
    if args.data_path:
        overrides += data_path_overrides(args.data_path)
    return overrides


def parse(argv: Optional[List[str]] = None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.gpu_memory_gb is not None and args.gpu_memory_gb <= 0:
        parser.error(f"argument --gpu-memory-gb: must be positive, got {args.gpu_memory_gb:g}")
    if args.gpu_memory_gb is not None and args.layout != "auto":
        parser.error("argument --gpu-memory-gb: applies to --layout auto only")
    return args, overrides_from_args(args)


def run_dir_problem(run_dir: str) -> Optional[str]:
    """Why the run folder cannot be created or written (None when it can), checked before any
    process group exists; creating nothing. Before, a file at that path was a FileExistsError
    traceback from rank 0 once start-up was under way."""
    path = os.path.abspath(run_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        return f"config key 'output.run_dir' (--run-dir) = {run_dir} is a file, not a folder"
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        return (f"config key 'output.run_dir' (--run-dir) = {run_dir} cannot be created: {existing} is not a "
                "writable folder")
    return None
