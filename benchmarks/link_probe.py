#!/usr/bin/env python
"""How fast the GPUs of one host talk: all-reduce, all-gather and reduce-scatter bus bandwidth.

Tensor parallelism's cost is its collectives, so before reading a tensor-parallel benchmark,
know the link: NCCL's bus bandwidth (algorithm bytes x 2 (n-1)/n for all-reduce, (n-1)/n for
the others, over the median time) at the activation sizes a layer moves.
    torchrun --nproc_per_node 4 benchmarks/link_probe.py --out link.json
Prints a table (rank 0) and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from megatron_sffn.parallel.collectives import all_gather_single, reduce_scatter_single  # noqa: E402

SIZES_MB = (1, 16, 64, 256)


def timed(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    rows = []
    groups = {world: None}
    if world > 2:
        pairs = [dist.new_group([r, r + 1]) for r in range(0, world, 2)]
        groups[2] = pairs[rank // 2]
    for n, group in groups.items():
        for mb in SIZES_MB:
            numel = mb * 2 ** 20 // 2  # bf16
            full = torch.randn(numel, device="cuda", dtype=torch.bfloat16)
            shard = torch.empty(numel // n, device="cuda", dtype=torch.bfloat16)
            share = (n - 1) / n
            for name, fn, factor in (
                    ("all_reduce", lambda: dist.all_reduce(full, group=group), 2 * share),
                    ("all_gather", lambda: all_gather_single(full, shard, group=group), share),
                    ("reduce_scatter", lambda: reduce_scatter_single(shard, full, group=group), share)):
                seconds = timed(fn)
                rows.append({"ranks": n, "op": name, "mb": mb, "ms": 1000 * seconds,
                             "bus_gb_s": factor * mb * 2 ** 20 / seconds / 1e9})
    if rank == 0:
        print(f"{'ranks':>5} {'op':<15} {'MB':>5} {'ms':>8} {'bus GB/s':>9}")
        for r in rows:
            print(f"{r['ranks']:>5} {r['op']:<15} {r['mb']:>5} {r['ms']:>8.3f} {r['bus_gb_s']:>9.1f}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
