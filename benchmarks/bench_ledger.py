#!/usr/bin/env python
"""Where a training step's milliseconds go, megatron_sffn against the plain-PyTorch reference.

The ledger: per step, milliseconds by category (GEMMs, FP8 scales and casts, attention,
elementwise/norm, optimizer, gradient copies and casts, cross-entropy, other, idle) for both
sides of one config; `--override training.fp8.enabled=true` puts our side in FP8 (the
reference stays bf16), and the FP8 row shows what its amax and cast kernels cost.
  ours       the TrainEngine step as bench_scaling.py builds it, with the launcher's default
             speed settings on a GPU (--mode compile: compiled blocks, CUDA graphs where
             config.resolve_speed_settings allows them on one GPU, the fused optimizer) and
             random token ids
  reference  bench_reference.py's step (whole-model torch.compile, bf16 autocast, fused AdamW,
             gradient clipping) on the embedded corpus
Each side runs in its own process (memory and compile caches apart): --warmup steps, then
--timed steps without the profiler (their mean: the unprofiled step time), then --steps steps
under torch.profiler (CPU + CUDA). profile_summary.py sorts every kernel into a category by its
name and the host ops around its launch (the optimizer range both harnesses open, the loss,
gradient accumulation); kernels running at once share their time, so the categories add up to
the busy time and, with idle = wall - busy, to the profiled wall time. On a CPU (--smoke) each
host op's own time is categorised instead, and idle is the host time outside any op.

Autocast's fp32 -> bf16 weight casts in the reference land in "gradient copies and casts";
our bf16 weights are written back from the fp32 masters inside the optimizer step.

During the unprofiled steps `nvidia-smi` samples the GPU's SM clock and power every 100 ms
(where it is found): the same kernel can take longer on one side only because that side's
denser step runs the GPU at a lower clock.

    python benchmarks/bench_ledger.py --configs configs/1p3b_dense.json configs/1p3b_lowrank.json \\
        --micro-batch-size 8 --out ledger.json
    python benchmarks/bench_ledger.py --smoke --out ledger.json    # CPU: tiny model, eager
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
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_summary import FP8_CASTS, IDLE, LEDGER_ROWS, profiled_ledger  # noqa: E402

SIDES = ("ours", "reference")
# configs/tiny_demo.json made smaller; bf16, so that ours runs its default fused optimizer
SMOKE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=256",
         "model.seq_length=64", "model.ffn.kind=lowrank", "model.ffn.rank=16", "training.precision=bf16"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/1p3b_dense.json", "configs/1p3b_lowrank.json"])
    ap.add_argument("--mode", default=None, choices=["compile", "eager"],
                    help="default: compile (the launcher's default on a GPU); eager with --smoke")
    ap.add_argument("--micro-batch-size", type=int, default=8, help="one micro-batch per optimizer step")
    ap.add_argument("--warmup", type=int, default=8, help="steps before any timing (compilation, graph capture)")
    ap.add_argument("--timed", type=int, default=10, help="steps timed without the profiler")
    ap.add_argument("--steps", type=int, default=5, help="steps under the profiler")
    ap.add_argument("--override", action="append", default=[], help="config override for both sides (repeatable)")
    ap.add_argument("--top", type=int, default=5, help="largest kernels (ops on CPU) per category kept in the JSON")
    ap.add_argument("--smoke", action="store_true", help="tiny bf16 model on CPU, eager, micro-batch 2, a few steps")
    ap.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)  # one side, in this process
    ap.add_argument("--out", default=None, help="JSON results")
    return ap.parse_args(argv)


def config_overrides(args) -> list:
    """What both sides' configs get: the smoke model, one micro-batch per step, no guides."""
    return (SMOKE if args.smoke else []) + args.override + [
        f"training.micro_batch_size={args.micro_batch_size}", f"training.global_batch_size={args.micro_batch_size}",
        "self_guided.enabled=false"]


# ---------------------------------------------------------------------------- the two steps

def build_ours(config: str, args):
    """(step(i), description): one TrainEngine step, not waiting for the device (as the
    training loop, which reads its losses at log steps only)."""
    from bench_scaling import random_batches

    from megatron_sffn.config import load_config
    from megatron_sffn.parallel.topology import build_parallel_state, init_distributed
    from megatron_sffn.structured.guide import GuideState
    from megatron_sffn.training.engine import TrainEngine
    init_distributed()
    # compile explicit (a CPU would say no to "auto"); cuda_graphs left to the config ("auto"),
    # so that they are on exactly where the launcher turns them on
    compile_flag = "true" if args.mode == "compile" else "false"
    cfg = load_config(config, config_overrides(args) + [f"training.compile={compile_flag}"], world_size=1)
    state = build_parallel_state(cfg)
    engine = TrainEngine.build(cfg, state, GuideState(active=False, seed=cfg.training.seed), guided=False)
    engine.set_lr(cfg.optimizer.lr)
    t = cfg.training
    precision = t.precision + (", FP8 GEMMs" if t.fp8.enabled else "")
    about = {"compile": t.compile, "cuda_graphs": t.cuda_graphs, "optimizer": cfg.optimizer.implementation,
             "precision": precision, "zero_stage": cfg.parallel.zero_stage, "ffn": cfg.model.ffn.kind}
    return (lambda i: engine.train_batch_deferred(random_batches(cfg, 1, seed=i))), about


def build_reference(config: str, args):
    """(step(i), description): bench_reference.py's model, optimizer and step, in our config's precision."""
    import torch

    from bench_reference import TokenWindows, build, train_step

    from megatron_sffn.config import load_config
    cfg = load_config(config, config_overrides(args))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    dtype = torch.bfloat16 if cfg.training.precision == "bf16" else None
    model, opt, step_fn = build(cfg, device, args.mode == "compile")
    data = TokenWindows("embedded", cfg.model.seq_length, cfg.training.seed)
    batch = types.SimpleNamespace(grad_accumulation=1, micro_batch_size=args.micro_batch_size)
    about = {"compile": args.mode == "compile", "precision": "bf16 autocast" if dtype else "fp32",
             "optimizer": "torch AdamW (fused on CUDA)", "ffn": cfg.model.ffn.kind}
    return (lambda i: train_step(step_fn, model, opt, data, batch, device, dtype, cfg.optimizer.grad_clip)), about


# ---------------------------------------------------------------------------- one side

CLOCK_QUERY = "clocks.sm,power.draw"


def clock_summary(csv_lines) -> dict:
    """Mean and lowest SM clock (MHz) and mean power (W) of nvidia-smi's `CLOCK_QUERY` samples
    (csv, noheader, nounits); unreadable lines (a sensor that says [N/A]) are skipped."""
    clocks, watts = [], []
    for line in csv_lines:
        try:
            clock, power = (float(v) for v in line.split(","))
        except ValueError:
            continue
        clocks.append(clock)
        watts.append(power)
    if not clocks:
        return {}
    return {"sm_clock_mhz_mean": sum(clocks) / len(clocks), "sm_clock_mhz_min": min(clocks),
            "power_w_mean": sum(watts) / len(watts), "clock_samples": len(clocks)}


class ClockSampler:
    """nvidia-smi sampling the first visible GPU while the block runs; `summary` after it ({}
    without nvidia-smi, on a CPU)."""

    def __init__(self):
        self.summary, self._proc = {}, None

    def __enter__(self):
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0] or "0"
        try:
            self._proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={CLOCK_QUERY}", "--format=csv,noheader,nounits",
                                           "-lms", "100", "-i", gpu], stdout=subprocess.PIPE,
                                          stderr=subprocess.DEVNULL, text=True)
        except OSError:
            self._proc = None
        return self

    def __exit__(self, *exc):
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate()
            self.summary = clock_summary(out.splitlines())
        return False


def timed_ms(step, first: int, count: int, sync) -> float:
    """Mean ms per step over `count` steps run back to back (the device waited for at the end only)."""
    sync()
    started = time.perf_counter()
    for i in range(first, first + count):
        step(i)
    sync()
    return 1000 * (time.perf_counter() - started) / count


def profiled(step, first: int, count: int, sync, top: int) -> dict:
    """The ledger of steps first .. first + count - 1 under torch.profiler."""
    import torch
    return profiled_ledger(lambda i: step(first + i), count, sync, torch.cuda.is_available(), top)


def run_side(side: str, config: str, args) -> dict:
    """One side of one config: warm-up (compilation, graph capture), the unprofiled mean, the ledger."""
    import torch
    build = build_ours if side == "ours" else build_reference
    step, about = build(config, args)
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for i in range(args.warmup):
        step(i)
    with ClockSampler() as clocks:
        unprofiled = timed_ms(step, args.warmup, args.timed, sync)
    result = profiled(step, args.warmup + args.timed, args.steps, sync, args.top)
    return {"side": side, "config": config, **about, "unprofiled_step_ms": unprofiled, **clocks.summary, **result}


def run_side_in_subprocess(side: str, config: str, args) -> dict:
    """run_side in a fresh process: its own CUDA memory, compile caches and process group."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "side.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--configs", config, "--mode", args.mode,
               "--micro-batch-size", str(args.micro_batch_size), "--warmup", str(args.warmup),
               "--timed", str(args.timed), "--steps", str(args.steps), "--top", str(args.top), "--out", out]
        cmd += ["--smoke"] if args.smoke else []
        for o in args.override:
            cmd += ["--override", o]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{config} {side}: FAILED (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}",
                  file=sys.stderr)
            return {"side": side, "config": config, "error": proc.returncode}
        with open(out) as f:
            return json.load(f)


# ---------------------------------------------------------------------------- the table

def table(config: str, ours: dict, ref: dict, args) -> str:
    """One config's ledger: a row per category, ours and the reference in ms per step."""
    if "error" in ours or "error" in ref:
        return f"{config}: failed ({', '.join(s['side'] for s in (ours, ref) if 'error' in s)})"
    head = (f"{config}: micro-batch {args.micro_batch_size}, {args.mode}, {args.steps} profiled steps, "
            f"per step ({ours['source']})\n"
            f"  ours: compile {ours['compile']}, CUDA graphs {ours['cuda_graphs']}, optimizer {ours['optimizer']}, "
            f"{ours['precision']}; reference: compile {ref['compile']}, {ref['precision']}")
    if "kernels" in ours:  # how many kernels the host ops around their launch could speak for
        head += "\n  kernels linked to their host op: " + ", ".join(
            f"{s['side']} {s['kernels_with_host_op']}/{s['kernels']}" for s in (ours, ref))
    lines = [head, f"{'category':<28} {'ours ms':>9} {'ref ms':>9} {'diff ms':>9}"]
    for label in LEDGER_ROWS:
        a, b = ours["ms_per_step"][label], ref["ms_per_step"][label]
        if label == FP8_CASTS and not (a or b):
            continue  # a bf16 step has none
        lines.append(f"{label:<28} {a:>9.2f} {b:>9.2f} {a - b:>+9.2f}")
    lines.append("-" * 58)
    for label, key in (("busy", "busy_ms_per_step"), ("wall (profiled)", "wall_ms_per_step"),
                       ("step, unprofiled", "unprofiled_step_ms")):
        a, b = ours[key], ref[key]
        lines.append(f"{label:<28} {a:>9.2f} {b:>9.2f} {a - b:>+9.2f}")
    for label, key in (("SM clock MHz, unprofiled", "sm_clock_mhz_mean"), ("power W, unprofiled", "power_w_mean")):
        if key in ours and key in ref:
            lines.append(f"{label:<28} {ours[key]:>9.0f} {ref[key]:>9.0f} {ours[key] - ref[key]:>+9.0f}")
    return "\n".join(lines)


def environment() -> dict:
    import torch
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": sys.version.split()[0],
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def write_json(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.mode = args.mode or ("eager" if args.smoke else "compile")
    if args.smoke:
        args.configs = ["configs/tiny_demo.json"]
        args.warmup, args.timed, args.steps = min(args.warmup, 2), min(args.timed, 3), min(args.steps, 2)
        args.micro_batch_size = 2
    if args.side:  # a child: one side of one config
        write_json(args.out, run_side(args.side, args.configs[0], args))
        return 0
    results = []
    for config in args.configs:
        ours, ref = [run_side_in_subprocess(side, config, args) for side in SIDES]
        results.append({"config": config, "ours": ours, "reference": ref})
        print(table(config, ours, ref, args) + "\n", flush=True)
        if args.out:
            write_json(args.out, {"environment": environment(), "args": vars(args), "rows": list(LEDGER_ROWS),
                                  "idle": IDLE, "results": results})
    return 1 if any("error" in r["ours"] or "error" in r["reference"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
