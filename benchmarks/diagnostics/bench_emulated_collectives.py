#!/usr/bin/env python
"""Host time of one traced collective call: a real NCCL rank against the emulated rank's.

Why: `bench_train.py --emulate` (tools/emulate_rank.py) times a tensor-parallel rank alone on
torch's fake process group, and a TP4 SP rank calls ~9 collectives per block and micro-batch,
so what the fake group spends per call is part of what the emulation reports as the rank's
host time. This puts the three side by side, each in its own process, on the functional
collectives the compiled blocks call (all_gather_into_tensor, reduce_scatter_tensor, each with
its wait_tensor):

  nccl        a real process group of one rank (gloo on a CPU): what a real rank's call costs
              on the host, its kernel moving no bytes across a link
  torch       the fake group of --world ranks as torch makes it (emulate_rank --collectives torch)
  one-kernel  the same with each call one kernel (emulate_rank's default, --collectives one-kernel)

Host us per call: the time to issue --calls calls of a small input (--small-rows rows; the
device keeps up), then the wall time per call at the TP4 SP block's shape (--rows x --hidden in,
bf16: the device's side, copies included). Prints a table and writes JSON.

    python benchmarks/diagnostics/bench_emulated_collectives.py --out F.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

CASES = ("nccl", "torch", "one-kernel")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--world", type=int, default=4, help="the emulated tensor group's size (default 4)")
    ap.add_argument("--rows", type=int, default=2048, help="rows one rank holds: 8 x 1024 tokens over TP4 SP")
    ap.add_argument("--hidden", type=int, default=2048, help="1.3B's hidden size")
    ap.add_argument("--small-rows", type=int, default=4, help="rows of the host-bound measurement")
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5, help="measurements per case; the median is reported")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--case", default=None, choices=CASES, help=argparse.SUPPRESS)  # internal: one case
    args = ap.parse_args(argv)
    for name in ("world", "rows", "hidden", "small_rows", "calls", "repeat"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.world < 2:
        ap.error(f"--world must be >= 2 (the emulated tensor group), got {args.world}")
    return args


def join(case: str, world: int):
    """This process's default group for `case`; returns (group name, group size, device)."""
    import torch
    import torch.distributed as dist

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if case == "nccl":
        from megatron_sffn.parallel.launch import free_port
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
        dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=0, world_size=1)
        size = 1
    else:
        from tools.emulate_rank import init_fake_group
        init_fake_group(world, collectives=case)
        size = world
    return dist.group.WORLD.group_name, size, device


def per_call_us(fn, calls: int, repeat: int, sync) -> tuple:
    """(median host us to issue one call, median wall us per call, device included)."""
    for _ in range(20):
        fn()
    sync()
    issue, wall = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        issued = time.perf_counter()
        sync()
        done = time.perf_counter()
        issue.append((issued - start) / calls * 1e6)
        wall.append((done - start) / calls * 1e6)
    issue.sort()
    wall.sort()
    return issue[len(issue) // 2], wall[len(wall) // 2]


def run_case(args) -> dict:
    import torch
    import torch.distributed._functional_collectives  # noqa: F401  (registers the ops)

    group, size, device = join(args.case, args.world)
    ops = torch.ops._c10d_functional
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    row = {"case": args.case, "group_size": size, "device": device}
    for label, rows in (("small", args.small_rows), ("block", args.rows)):
        local = torch.randn(rows, args.hidden, device=device, dtype=torch.bfloat16)
        full = torch.randn(rows * size, args.hidden, device=device, dtype=torch.bfloat16)
        gather = lambda: ops.wait_tensor(ops.all_gather_into_tensor(local, size, group))  # noqa: E731
        scatter = lambda: ops.wait_tensor(ops.reduce_scatter_tensor(full, "sum", size, group))  # noqa: E731
        for name, fn in (("all_gather", gather), ("reduce_scatter", scatter)):
            issue, wall = per_call_us(fn, args.calls if label == "small" else max(1, args.calls // 10),
                                      args.repeat, sync)
            row[f"{name}_{label}_issue_us"], row[f"{name}_{label}_wall_us"] = issue, wall
    if device == "cuda":
        row["gpu"] = torch.cuda.get_device_name()
    row["torch"] = torch.__version__
    return row


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.case:
        print("RESULT " + json.dumps(run_case(args)), flush=True)
        return
    rows = []
    for case in args.cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--world", str(args.world),
               "--rows", str(args.rows), "--hidden", str(args.hidden), "--small-rows", str(args.small_rows),
               "--calls", str(args.calls), "--repeat", str(args.repeat)]
        env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        found = [line[len("RESULT "):] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not found:
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            raise SystemExit(f"case {case}: exit {proc.returncode}")
        rows.append(json.loads(found[0]))
    print(f"{'case':<11} {'group':>5} {'AG issue us':>12} {'RS issue us':>12} "
          f"{'AG block us':>12} {'RS block us':>12}   ({args.small_rows} rows; {args.rows} x {args.hidden} bf16)")
    for r in rows:
        print(f"{r['case']:<11} {r['group_size']:>5} {r['all_gather_small_issue_us']:>12.1f} "
              f"{r['reduce_scatter_small_issue_us']:>12.1f} {r['all_gather_block_wall_us']:>12.1f} "
              f"{r['reduce_scatter_block_wall_us']:>12.1f}")
    if args.out:
        meta = {"date": datetime.date.today().isoformat(), "world": args.world, "rows": args.rows,
                "hidden": args.hidden, "small_rows": args.small_rows, "calls": args.calls, "repeat": args.repeat}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
