#!/usr/bin/env python
"""What the optimizer machinery costs per step: DeepSpeed's bf16 optimizer against
optimizer.implementation = fused, on one rank, through the real TrainEngine.

Each case trains a config's model on micro-batches of one short sequence, so forward and
backward are small and the step time is mostly what scales with the parameter count:
gradient bookkeeping (fp32 accumulation buffers, zeroing), the norm and clip, AdamW and the
bf16 write-back. Prints a table (median step time, ms per 1M parameters, peak memory) and
writes JSON. Runs on a GPU (the number that matters) or, with --smoke, on a CPU.

    python benchmarks/bench_optimizer.py --config configs/1p3b_lowrank.json --out opt.json
    python benchmarks/bench_optimizer.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CASES = {  # name -> overrides
    "deepspeed_zero1": ['optimizer.implementation="deepspeed"', "parallel.zero_stage=1"],
    "fused_zero0": ['optimizer.implementation="fused"', "parallel.zero_stage=0", 'optimizer.update="torch"'],
    "fused_zero1": ['optimizer.implementation="fused"', "parallel.zero_stage=1", 'optimizer.update="torch"'],
    # the update as one Inductor pass with the bf16 write (training/compiled_update.py)
    "fused_zero1_compiled": ['optimizer.implementation="fused"', "parallel.zero_stage=1",
                             'optimizer.update="compiled"'],
}
SMOKE = ["model.hidden_size=128", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=512",
         "model.ffn.rank=32", "model.vocab_size=1024"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/1p3b_lowrank.json")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--seq", type=int, default=16, help="tokens per micro-batch (small on purpose)")
    ap.add_argument("--grad-accumulation", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="a ~0.6M-parameter model, a few steps (CPU check)")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--in-process", action="store_true",
                    help="run every case in this process (default: one fresh process per case, so each "
                         "peak-memory figure is the case's own and not what an earlier engine left behind)")
    return ap.parse_args(argv)


def batches(vocab: int, seq: int):
    import torch
    g = torch.Generator().manual_seed(0)
    while True:
        ids = torch.randint(0, vocab, (1, seq + 1), generator=g)
        yield ids[:, :-1], ids[:, 1:]


def run_case(name: str, args, state_cache: dict) -> dict:
    import torch

    from megatron_sffn.config import load_config
    from megatron_sffn.parallel.topology import build_parallel_state
    from megatron_sffn.structured.guide import GuideState
    from megatron_sffn.training.engine import TrainEngine

    overrides = (SMOKE if args.smoke else []) + CASES[name] + [
        "self_guided.enabled=false", "training.precision=\"bf16\"", f"model.seq_length={args.seq}",
        "training.micro_batch_size=1", f"training.global_batch_size={args.grad_accumulation}"]
    cfg = load_config(args.config, overrides)
    state = state_cache.setdefault("state", build_parallel_state(cfg))
    engine = TrainEngine.build(cfg, state, GuideState(active=False), guided=False)
    params = sum(p.numel() for p in engine.module.parameters())
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    data, times = batches(cfg.model.vocab_size, args.seq), []
    for i in range(args.warmup + args.steps):
        started = time.perf_counter()
        engine.train_batch(data)  # returns a float: the step has finished on the device
        if i >= args.warmup:
            times.append(time.perf_counter() - started)
    result = {"case": name, "params": params, "step_ms": 1000 * statistics.median(times),
              "ms_per_1m_params": 1000 * statistics.median(times) / (params / 1e6),
              "peak_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None}
    engine.close()
    del engine
    if cuda:
        torch.cuda.empty_cache()
    print(f"{name:<18} {params / 1e6:>9.1f}M params  {result['step_ms']:>9.2f} ms/step", flush=True)
    return result


def run_case_in_subprocess(name: str, index: int, argv) -> dict:
    """One case in a fresh process (its own port): returns that process's row."""
    import subprocess
    import tempfile
    rest, skip = [], False
    for a in argv:  # drop --cases/--out (and their values); the child gets its own
        if skip and not a.startswith("--"):
            continue
        skip = a in ("--cases", "--out")
        if not skip:
            rest.append(a)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "row.json")
        env = dict(os.environ, MASTER_PORT=str(int(os.environ.get("MASTER_PORT", "29531")) + index))
        subprocess.run([sys.executable, os.path.abspath(__file__), *rest, "--cases", name, "--out", out],
                       check=True, env=env)
        with open(out) as f:
            return json.load(f)["rows"][0]


def environment() -> dict:
    import datetime

    import deepspeed
    import torch
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = min(args.steps, 5), min(args.warmup, 2)
    if len(args.cases) > 1 and not args.in_process:
        rows = [run_case_in_subprocess(name, i, argv if argv is not None else sys.argv[1:])
                for i, name in enumerate(args.cases)]
    else:
        os.environ.setdefault("MASTER_PORT", "29531")
        from megatron_sffn.parallel.topology import init_distributed
        init_distributed()
        cache: dict = {}
        rows = [run_case(name, args, cache) for name in args.cases]
    base = rows[0]["step_ms"]
    print(f"\n{'case':<18} {'params':>10} {'ms/step':>9} {'ms/1M params':>13} {'vs ' + rows[0]['case']:>22} {'peak GB':>8}")
    for r in rows:
        peak = f"{r['peak_gb']:.2f}" if r["peak_gb"] is not None else "n/a"
        print(f"{r['case']:<18} {r['params'] / 1e6:>9.1f}M {r['step_ms']:>9.2f} {r['ms_per_1m_params']:>13.4f} "
              f"{base / r['step_ms']:>21.2f}x {peak:>8}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
