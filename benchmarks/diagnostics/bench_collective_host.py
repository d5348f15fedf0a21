#!/usr/bin/env python
"""Host time of one tensor-parallel collective call, and what torch's process-group settings do to it.

On one H200 (2026-11-29) the traced tensor-parallel path of the 1.3B model cost 1.86 ms more host
time per block than the plain compiled model, at about 9 collectives per block: ~200 us of host
time per collective call, where a kernel launch costs ~6 us. A TP rank is host-bound, so this cost
is the tensor-parallel layouts' ceiling. This measures it directly: a loop of all-gathers and
reduce-scatters of a tensor-parallel-sized activation, issued the three ways the model issues them
(the eager blocking call, the eager asynchronous call with its wait, the functional collective the
compiled graphs call), beside a plain elementwise op as the launch reference, under each setting
in --settings (each in fresh processes, since torch reads them at process-group creation):

  default         torch's defaults
  no-fr           TORCH_FR_BUFFER_SIZE=0 (and its older name): no flight-recorder entry per call
  no-fr-no-rs     no-fr + TORCH_NCCL_AVOID_RECORD_STREAMS=1

Prints microseconds of host time per call and writes JSON. On a CPU it runs the gloo group.

    python benchmarks/diagnostics/bench_collective_host.py --nproc 1 --out benchmarks/results/collective_host_1gpu.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCHMARKS)  # the benchmarks' shared helpers (local_ranks, bench_reference, ...)

SETTINGS = {
    "default": {},
    "no-fr": {"TORCH_FR_BUFFER_SIZE": "0", "TORCH_NCCL_TRACE_BUFFER_SIZE": "0"},
    "no-fr-no-rs": {"TORCH_FR_BUFFER_SIZE": "0", "TORCH_NCCL_TRACE_BUFFER_SIZE": "0",
                    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1"},
}
CALLS = ("elementwise", "all_gather", "all_gather_async", "functional_all_gather",
         "reduce_scatter", "functional_reduce_scatter")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nproc", type=int, default=1, help="ranks in the group (one GPU each)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--shape", type=int, nargs=2, default=[1024, 2048], help="local rows x width of the gathered activation")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", default=None)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def measure(args) -> dict:
    import torch
    import torch.distributed as dist
    cuda = torch.cuda.is_available()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            **({"device_id": device} if cuda else {}))
    group = dist.new_group(list(range(world)))
    funcol = torch.ops._c10d_functional
    name = group.group_name
    dtype = torch.bfloat16 if cuda else torch.float32
    shard = torch.randn(*args.shape, device=device, dtype=dtype)
    whole = torch.randn(args.shape[0] * world, args.shape[1], device=device, dtype=dtype)
    gathered = torch.empty_like(whole)
    scattered = torch.empty_like(shard)

    def all_gather():
        dist.all_gather_into_tensor(gathered, shard, group=group)

    def all_gather_async():
        dist.all_gather_into_tensor(gathered, shard, group=group, async_op=True).wait()

    def functional_all_gather():
        funcol.wait_tensor(funcol.all_gather_into_tensor(shard, world, name))

    def reduce_scatter():
        dist.reduce_scatter_tensor(scattered, whole, group=group)

    def functional_reduce_scatter():
        funcol.wait_tensor(funcol.reduce_scatter_tensor(whole, "sum", world, name))

    def elementwise():
        torch.add(shard, 1.0, out=scattered)

    calls = dict(elementwise=elementwise, all_gather=all_gather, all_gather_async=all_gather_async,
                 functional_all_gather=functional_all_gather, reduce_scatter=reduce_scatter,
                 functional_reduce_scatter=functional_reduce_scatter)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    host_us = {}
    for label, call in calls.items():
        for _ in range(50):
            call()
        sync()
        dist.barrier(group=group)
        start = time.perf_counter()
        for _ in range(args.iterations):
            call()
        host_us[label] = 1e6 * (time.perf_counter() - start) / args.iterations
        sync()
    dist.barrier()
    dist.destroy_process_group()
    return {"host_us": host_us, "device": torch.cuda.get_device_name() if cuda else "cpu",
            "backend": "nccl" if cuda else "gloo", "torch": torch.__version__}


def run_setting(setting: str, args, out_path: str) -> dict:
    from local_ranks import run_local_ranks
    cmd = [sys.executable, os.path.abspath(__file__), "--case", setting, "--out", out_path,
           "--iterations", str(args.iterations), "--shape", *map(str, args.shape)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_FR_", "TORCH_NCCL_"))}
    ranks = run_local_ranks(cmd, args.nproc, args.timeout, env=dict(env, **SETTINGS[setting]))
    if ranks.hung:
        return {"setting": setting, "hung": True, "output_tail": ranks.tails()}
    if ranks.failed:
        return {"setting": setting, "failed": ranks.codes, "output_tail": ranks.tails()}
    with open(out_path) as f:
        return dict(json.load(f), setting=setting, env=SETTINGS[setting])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:
        result = measure(args)
        if os.environ.get("RANK", "0") == "0":
            with open(args.out, "w") as f:
                json.dump(result, f)
        from local_ranks import leave_and_exit
        leave_and_exit(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            rows.append(run_setting(setting, args, os.path.join(tmp, f"{setting}.json")))
    print(f"host microseconds per call, {args.nproc} rank(s), shard {args.shape[0]}x{args.shape[1]}")
    print(f"{'setting':<14}" + "".join(f"{c:>26}" for c in CALLS))
    for r in rows:
        if "host_us" not in r:
            print(f"{r['setting']:<14}  {'HUNG' if r.get('hung') else 'FAILED: ' + r.get('output_tail', '')}")
            continue
        print(f"{r['setting']:<14}" + "".join(f"{r['host_us'][c]:>26.1f}" for c in CALLS))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": {"nproc": args.nproc, "shape": args.shape, "iterations": args.iterations,
                                "date": datetime.date.today().isoformat()}, "rows": rows}, f, indent=1)
    return 0 if all("host_us" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
