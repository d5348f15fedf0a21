#!/usr/bin/env python
"""Validation loss and perplexity of a checkpoint on an indexed dataset.

    python tools/evaluate.py --load CKPT --data-path PREFIX [PREFIX ...] [--json OUT]
        [--eval-iters N] [--micro-batch-size N] [--split 969,30,1]

CKPT is a consolidated folder, or a run folder / DeepSpeed checkpoint (consolidated on the
fly, weights only). The model runs on one device. The samples are the training loop's
validation samples: the first eval_iters global batches of the validation split, built by
the loop's own DataFeed from the run's seed, sequence length, global batch size, split and
sample counts, so on the run's data with the run's settings the loss equals the loop's
validation loss at that checkpoint (float rounding aside). --data-path also takes
"embedded" and Megatron-style weighted lists (0.7 A 0.3 B); --split "0,1,0" evaluates a
whole held-out dataset.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_sffn.config import config_from_dict  # noqa: E402
from megatron_sffn.data.gpt_dataset import DatasetConfigError  # noqa: E402
from megatron_sffn.data.indexed_dataset import IndexedDatasetError  # noqa: E402
from megatron_sffn.data.tokenizer import TokenizerError  # noqa: E402
from megatron_sffn.training.agree import StartupError  # noqa: E402
from megatron_sffn.training.cli import data_path_overrides  # noqa: E402
from tools.checkpoint_io import USER_ERRORS, load_single_rank_checkpoint  # noqa: E402

DATA_ERRORS = (DatasetConfigError, IndexedDatasetError, TokenizerError, StartupError)
SINGLE_DEVICE = SimpleNamespace(data_size=1, data_rank=0, rank=0)  # what DataFeed needs of the layout


def evaluation_config(cfg, data_path, eval_iters=None, micro_batch_size=None, split=None):
    """The run's config with the evaluation's data and batch settings (validated)."""
    overrides = data_path_overrides(data_path)
    if eval_iters is not None:
        overrides.append(f"training.eval_iters={eval_iters}")
    if micro_batch_size is not None:
        overrides.append(f"training.micro_batch_size={micro_batch_size}")
    if split is not None:
        overrides.append(f"data.split={split}")
    overrides += ["parallel.tensor=1", "parallel.pipeline=1"]
    return config_from_dict(cfg.to_dict(), overrides, world_size=1)


@torch.no_grad()
def evaluate(model, cfg, show_progress: bool = True) -> dict:
    """Mean next-token loss over the loop's validation batches (mean of global-batch means)."""
    from megatron_sffn.training.data_feed import DataFeed
    from megatron_sffn.training.phases import RunPhases
    feed = DataFeed(cfg, SINGLE_DEVICE, RunPhases.from_config(cfg), show_progress=show_progress)
    device = next(model.parameters()).device
    batch_losses = []
    for batch in feed.valid_global_batches(desc="evaluate"):
        micro = [model.loss(ids.to(device), labels.to(device)).float() for ids, labels in batch]
        batch_losses.append(float(torch.stack(micro).mean()))
    loss = sum(batch_losses) / len(batch_losses)
    t = cfg.training
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "batch_losses": batch_losses,
            "eval_iters": t.eval_iters, "global_batch_size": t.global_batch_size,
            "micro_batch_size": t.micro_batch_size, "samples": t.eval_iters * t.global_batch_size,
            "tokens": t.eval_iters * t.global_batch_size * cfg.model.seq_length}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--load", required=True, help="consolidated folder, run folder or DeepSpeed checkpoint")
    p.add_argument("--data-path", nargs="+", required=True, metavar="PREFIX",
                   help="indexed dataset prefix(es), 'embedded', or weighted: 0.7 A 0.3 B")
    p.add_argument("--json", default=None, help="write the result here")
    p.add_argument("--eval-iters", type=int, default=None, help="global batches (default: the run's eval_iters)")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="samples per forward (default: the run's); must divide the global batch size")
    p.add_argument("--split", default=None, help="train,valid,test weights (default: the run's data.split)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    started = time.perf_counter()
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        model, cfg, meta = load_single_rank_checkpoint(args.load, args.device, dtype)
        cfg = evaluation_config(cfg, args.data_path, args.eval_iters, args.micro_batch_size, args.split)
        result = evaluate(model, cfg, show_progress=not args.no_progress)
    except USER_ERRORS + DATA_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result.update({"checkpoint": os.path.abspath(args.load), "step": meta.get("step"),
                   "consumed_tokens": meta.get("consumed_tokens"), "data_path": args.data_path,
                   "split": cfg.data.split, "seq_length": cfg.model.seq_length, "device": args.device,
                   "dtype": args.dtype, "seconds": time.perf_counter() - started})
    print(f"step {result['step']}: validation loss {result['loss']:.6f} | perplexity {result['perplexity']:.3f} "
          f"({result['eval_iters']} batches of {result['global_batch_size']}, {result['tokens']:,} tokens)")
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
