#!/usr/bin/env python
"""The largest micro-batch a config trains with on this GPU (one process, the real engine).

Builds the TrainEngine once (DeepSpeed, the config's precision and ZeRO stage, optimizer
state allocated by a first step), then runs one full training step (forward, backward,
optimizer) at each candidate micro-batch size in increasing order until one runs out of
memory. Prints a table of peak memory per size and writes JSON.

    python benchmarks/max_micro_batch.py --config configs/1p3b_lowrank.json --sizes 8 16 24 32 40 48
    python benchmarks/max_micro_batch.py --config configs/tiny_demo.json --sizes 1 2 4   # CPU smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 24, 32, 40, 48, 64])
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import torch

    from megatron_sffn.config import load_config
    from megatron_sffn.parallel.topology import build_parallel_state, init_distributed
    from megatron_sffn.structured.guide import GuideState
    from megatron_sffn.training.engine import TrainEngine

    init_distributed()
    first = min(args.sizes)
    cfg = load_config(args.config, args.override + [f"training.micro_batch_size={first}",
                                                    f"training.global_batch_size={first}"], world_size=1)
    state = build_parallel_state(cfg)
    engine = TrainEngine.build(cfg, state, GuideState(active=False), guided=False)
    engine.set_lr(1e-6)
    cuda = torch.cuda.is_available()
    rows = []
    for size in sorted(args.sizes):
        ids = torch.randint(0, cfg.model.vocab_size, (size, cfg.model.seq_length + 1))
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            engine.train_batch(iter([(ids[:, :-1], ids[:, 1:])]))
            if cuda:
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            rows.append({"micro_batch": size, "fits": False})
            print(f"micro-batch {size:>4}: out of memory", flush=True)
            break
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
        rows.append({"micro_batch": size, "fits": True, "max_allocated_gb": peak})
        print(f"micro-batch {size:>4}: fits" + (f", peak {peak:.1f} GB" if peak is not None else ""), flush=True)
    largest = max((r["micro_batch"] for r in rows if r["fits"]), default=None)
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"{os.path.basename(args.config)} on {device}: largest micro-batch tried that fits = {largest}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "overrides": args.override, "device": device, "largest": largest,
                       "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
