#!/usr/bin/env python
"""The plain-PyTorch speed reference: what a competent user's own script trains at.

benchmarks/reference_model.py (the project's model shapes, none of its code) trained the
simple fast way: fp32 parameters under bf16 autocast (fp32 on CPU), SDPA attention, torch's
fused AdamW, gradient clipping, whole-model torch.compile (--modes compile), random windows
of the same token data. Every speed claim of megatron_sffn is a ratio against this, measured
in the same run (bench_train.py --reference), so the step mirrors bench_train's: the same
micro-batch, the same tokens per optimizer step (--grad-accumulation), `--steps` in total of
which those after `--warmup` are timed (median step time). FLOPs per token come from
megatron_sffn/model/accounting.py, so both sides count the same FLOPs. Peak memory is
torch.cuda.max_memory_allocated over the whole process (start-up included). Each case runs in
its own process. Prints a table and writes JSON.

    python benchmarks/bench_reference.py --configs configs/1p3b_dense.json configs/1p3b_lowrank.json \\
        --modes compile --micro-batch-size 8 --steps 30 --warmup 10 --out results/reference.json
    python benchmarks/bench_reference.py --smoke          # CPU: tiny model, every FFN kind, eager
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from profile_summary import OPTIMIZER_RANGE  # noqa: E402

SMOKE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=256",
         "model.seq_length=32", "training.precision=fp32", "self_guided.enabled=false"]
SMOKE_KINDS = {  # name -> overrides of configs/tiny_demo.json (a lowrank model)
    "dense": ["model.ffn.kind=dense", "model.ffn.rank=null"],
    "lowrank": ["model.ffn.rank=16"],
    "blockdense": ["model.ffn.kind=blockdense", "model.ffn.rank=32", "model.ffn.blocks=4"],
    "blockshuffle": ["model.ffn.kind=blockshuffle", "model.ffn.rank=null", "model.ffn.blocks=4"],
}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/1p3b_dense.json", "configs/1p3b_lowrank.json"])
    ap.add_argument("--modes", nargs="+", default=None, choices=["eager", "compile"],
                    help="default: compile (eager with --smoke)")
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--grad-accumulation", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps in total (timed: those after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="auto: bf16 autocast on CUDA, fp32 on CPU (parameters are fp32 either way)")
    ap.add_argument("--data-path", default="embedded", help="indexed-dataset prefix, or 'embedded'")
    ap.add_argument("--override", action="append", default=[], help="config override (only model.* matters)")
    ap.add_argument("--name", default=None, help="case name in the table (default: config-mode)")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--smoke", action="store_true", help="tiny model, every FFN kind, a few steps (CPU check)")
    ap.add_argument("--kinds", nargs="+", default=list(SMOKE_KINDS), choices=list(SMOKE_KINDS),
                    help="with --smoke: the FFN kinds to run")
    ap.add_argument("--in-process", action="store_true",
                    help="run every case in this process (default: one process per case, so each peak "
                         "memory is the case's own, start-up included)")
    return ap.parse_args(argv)


def cases(args) -> list:
    """[(name, config, mode, overrides)]."""
    if args.smoke:
        return [(f"smoke-{kind}-{mode}", "configs/tiny_demo.json", mode, SMOKE + extra + args.override)
                for kind, extra in SMOKE_KINDS.items() if kind in args.kinds for mode in args.modes]
    return [(args.name or f"{os.path.basename(c)}-{m}", c, m, args.override) for c in args.configs for m in args.modes]


class TokenWindows:
    """Random (B, S + 1) windows of a tokenized corpus (its .bin), as a nanoGPT-style script reads data."""

    def __init__(self, data_path: str, seq: int, seed: int):
        import numpy as np

        from megatron_sffn.data.indexed_dataset import IndexedDataset, data_file_path
        if data_path == "embedded":
            from megatron_sffn.data.assets import default_data_prefix
            data_path = default_data_prefix()
        self.tokens = np.memmap(data_file_path(data_path), dtype=IndexedDataset(data_path).dtype, mode="r")
        self.seq, self.rng = seq, np.random.default_rng(seed)

    def batch(self, batch: int, device):
        import numpy as np
        import torch
        starts = self.rng.integers(0, len(self.tokens) - self.seq - 1, size=batch)
        rows = np.stack([self.tokens[s: s + self.seq + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(rows)
        w = w.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else w
        return w[:, :-1], w[:, 1:]


def build(cfg, device, compiled: bool):
    """The reference model on `device` (built there, fp32), its fused AdamW, the callable to train."""
    import torch

    from reference_model import ReferenceGPT
    torch.manual_seed(cfg.training.seed)
    with torch.device(device):
        model = ReferenceGPT(cfg.model).initialize()
    o = cfg.optimizer
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay}, {"params": other, "weight_decay": 0.0}],
                            lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=device.type == "cuda" or None)
    return model, opt, (torch.compile(model) if compiled else model)


def train_step(step_fn, model, opt, data, args, device, dtype, grad_clip):
    """One optimizer step over --grad-accumulation micro-batches; returns the mean loss as a device
    tensor: a script that reads it every step waits for the device every step, which the
    timed window below does not (megatron_sffn's loop reads its losses at log steps only)."""
    import torch
    total = 0.0
    for _ in range(args.grad_accumulation):
        x, y = data.batch(args.micro_batch_size, device)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = step_fn(x, y) / args.grad_accumulation
        loss.backward()
        total = total + loss.detach()
    with torch.profiler.record_function(OPTIMIZER_RANGE):  # bench_ledger.py: the clip is the optimizer's too
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return total


def run_case(name: str, config: str, mode: str, overrides: list, args) -> dict:
    import torch

    from megatron_sffn.config import load_config
    from megatron_sffn.model.accounting import model_stats, train_flops_per_token
    from megatron_sffn.training.metrics import detect_peak_tflops
    cfg = load_config(config, list(overrides) + [f"training.micro_batch_size={args.micro_batch_size}",
                                                 f"training.global_batch_size={args.micro_batch_size * args.grad_accumulation}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")
    dtype = torch.bfloat16 if bf16 else None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model, opt, step_fn = build(cfg, device, mode == "compile")
    data = TokenWindows(args.data_path, cfg.model.seq_length, cfg.training.seed)
    warmup_steps = max(1, round(cfg.optimizer.warmup_fraction * args.steps))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    losses, timed_from, first_step_s = [], None, None
    warmup = min(args.warmup, args.steps - 1)
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.optimizer.lr * min(1.0, (step + 1) / warmup_steps)
        if step == warmup:
            sync()
            timed_from = time.perf_counter()
        started = time.perf_counter()
        losses.append(train_step(step_fn, model, opt, data, args, device, dtype, cfg.optimizer.grad_clip))
        if step == 0:
            sync()
            first_step_s = time.perf_counter() - started
    sync()
    # the timed steps' wall time, device work included, with no wait between steps
    step_time = (time.perf_counter() - timed_from) / (args.steps - warmup)
    losses = [float(loss) for loss in losses]
    stats = model_stats(cfg.model)
    tokens_per_step = args.micro_batch_size * args.grad_accumulation * cfg.model.seq_length
    tflops = train_flops_per_token(stats) * tokens_per_step / step_time / 1e12
    peak = detect_peak_tflops(cfg.training.peak_tflops_per_gpu)
    memory = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else _rss_gb()
    return {"name": name, "config": os.path.basename(config), "mode": mode, "ffn": cfg.model.ffn.kind,
            "overrides": list(overrides), "precision": "bf16 autocast" if bf16 else "fp32",
            "params": sum(p.numel() for p in model.parameters()), "accounting_params": stats.total_params,
            "flops_per_token": train_flops_per_token(stats), "micro_batch": args.micro_batch_size,
            "grad_accumulation": args.grad_accumulation, "tokens_per_step": tokens_per_step,
            "timed_steps": args.steps - warmup, "first_step_s": first_step_s, "step_time_s": step_time,
            "tokens_per_s": tokens_per_step / step_time, "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else None,
            "max_allocated_gb": memory, "first_loss": losses[0], "final_loss": losses[-1], "losses": losses}


def _rss_gb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_case_in_subprocess(case, args) -> dict:
    name, config, mode, overrides = case
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--configs", config, "--modes", mode, "--name", name,
               "--in-process", "--out", out, "--data-path", args.data_path, "--precision", args.precision,
               "--micro-batch-size", str(args.micro_batch_size), "--grad-accumulation", str(args.grad_accumulation),
               "--steps", str(args.steps), "--warmup", str(args.warmup)]
        for o in overrides:
            cmd += ["--override", o]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: FAILED (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}", file=sys.stderr)
            return {"name": name, "config": os.path.basename(config), "mode": mode, "error": proc.returncode}
        with open(out) as f:
            return json.load(f)["results"][0]


def environment() -> dict:
    import torch
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": sys.version.split()[0],
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def print_table(rows) -> None:
    header = (f"{'case':<32} {'params':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'MFU':>6} {'step ms':>8} "
              f"{'first s':>8} {'mem GB':>7} {'loss':>15}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<32} failed (exit {r['error']})")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        print(f"{r['name']:<32} {r['params'] / 1e6:>8.1f}M {r['tokens_per_s']:>10,.0f} {r['tflops_per_gpu']:>8.1f} "
              f"{mfu:>6} {1000 * r['step_time_s']:>8.1f} {r['first_step_s']:>8.1f} {r['max_allocated_gb']:>7.2f} "
              f"{r['first_loss']:>7.3f}->{r['final_loss']:<7.3f}")


def write_json(args, rows) -> None:
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "args": vars(args), "results": rows}, f, indent=2)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.modes = args.modes or (["eager"] if args.smoke else ["compile"])
    if args.smoke:
        args.steps, args.warmup, args.micro_batch_size = min(args.steps, 20), min(args.warmup, 2), 4
    todo = cases(args)
    rows = []
    for case in todo:
        rows.append(run_case(*case, args) if args.in_process or len(todo) == 1 else run_case_in_subprocess(case, args))
        write_json(args, rows)
    print_table(rows)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
