#!/usr/bin/env python
"""Convert a checkpoint: consolidate, reshape to another layout, or export to transformers.

    python tools/convert_checkpoint.py --load RUN_OR_CKPT --save OUT --to consolidated [--weights-only]
    python tools/convert_checkpoint.py --load CKPT --save NEW_RUN --to deepspeed \\
        [--tensor-parallel N --pipeline-parallel M --data-parallel D --zero-stage Z] \\
        [--optimizer-implementation deepspeed|fused]
    python tools/convert_checkpoint.py --load CKPT --save HF_DIR --to hf [--keep-factors]

--load takes a run folder (its newest complete checkpoint), a checkpoint step folder
(RUN/checkpoints/stepXXXXXXXX) or a consolidated folder. The DeepSpeed engine is rebuilt on
local CPU processes (gloo), one per rank of the layout it loads or writes, so no GPU is
needed. `--to deepspeed` writes NEW_RUN/config.json and NEW_RUN/checkpoints/...; resume with

    deepspeed --num_gpus T*P*D launchers/pretrain.py --config NEW_RUN/config.json

Errors (missing or partial checkpoint, a layout that does not divide the model, a config
that does not match the weights, an existing --save) are one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="run folder, checkpoint step folder or consolidated folder")
    p.add_argument("--save", required=True, help="output folder (must not exist)")
    p.add_argument("--to", required=True, choices=["consolidated", "deepspeed", "hf"])
    p.add_argument("--tensor-parallel", type=int, default=None, help="--to deepspeed: default the source's")
    p.add_argument("--pipeline-parallel", type=int, default=None, help="--to deepspeed: default the source's")
    p.add_argument("--data-parallel", type=int, default=None, help="--to deepspeed: default the source's")
    p.add_argument("--zero-stage", type=int, default=None, help="--to deepspeed: default the source's")
    p.add_argument("--optimizer-implementation", choices=["deepspeed", "fused"], default=None,
                   help="--to deepspeed: optimizer.implementation of the target run (default the source's; "
                        "fused needs --zero-stage 0)")
    p.add_argument("--weights-only", action="store_true", help="--to consolidated: leave out the Adam moments")
    p.add_argument("--keep-factors", action="store_true",
                   help="--to hf: also save the structured factors (structured_factors.safetensors)")
    p.add_argument("--tokenizer-model", default=None, help="--to hf: default the run's data.tokenizer_model")
    p.add_argument("--timeout", type=float, default=None, help="seconds before the conversion ranks are stopped")
    p.add_argument("--verbose", action="store_true", help="show rank 0's output")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from megatron_sffn.checkpoint import convert
    from megatron_sffn.checkpoint.local_ranks import WorkerError

    layout_flags = [f for f in ("tensor_parallel", "pipeline_parallel", "data_parallel", "zero_stage",
                                "optimizer_implementation")
                    if getattr(args, f) is not None]
    started = time.perf_counter()
    try:
        if layout_flags and args.to != "deepspeed":
            raise convert.ConversionError(f"--{layout_flags[0].replace('_', '-')} applies to --to deepspeed only")
        if args.to == "consolidated":
            out = convert.consolidate(args.load, args.save, not args.weights_only, args.timeout, args.verbose)
            what = "consolidated checkpoint" + (" (weights only)" if args.weights_only else "")
        elif args.to == "deepspeed":
            out = convert.reshape(args.load, args.save, args.tensor_parallel, args.pipeline_parallel,
                                  args.data_parallel, args.zero_stage, args.timeout, args.verbose,
                                  args.optimizer_implementation)
            what = f"run folder; resume with: launchers/pretrain.py --config {os.path.join(out, 'config.json')}"
        else:
            arch = convert.export_to_hf(args.load, args.save, args.keep_factors, args.tokenizer_model, args.verbose)
            out, what = os.path.abspath(args.save), f"transformers {arch} folder"
    except convert.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code if isinstance(e, WorkerError) else 2
    print(f"wrote {out}: {what} ({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
