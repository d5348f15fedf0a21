#!/usr/bin/env python
"""Whole-model training throughput through the real launcher and DeepSpeed engine.

Each case is one `launchers/pretrain.py` run (real data: the embedded corpus unless
--data-path is given; real engine: DeepSpeed with the config's ZeRO stage and precision),
timed from the run's own per-step log (run_dir/metrics.jsonl). Steps after the warm-up
give the median step time, tokens/s, model TFLOP/s per GPU (model/accounting.py), MFU and
peak memory. Prints a table and writes JSON.

    python benchmarks/bench_train.py --configs configs/1p3b_dense.json configs/1p3b_lowrank.json \\
        --modes eager compile --micro-batch-size 8 --steps 30 --out results/train.json
    python benchmarks/bench_train.py --nproc 2 ...     # deepspeed --num_gpus 2 (data parallel)
    python benchmarks/bench_train.py --smoke           # CPU: tiny model, 2 modes, a few steps
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SMOKE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=256",
         "model.seq_length=32", "model.ffn.rank=16", "training.precision=fp32"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/1p3b_dense.json", "configs/1p3b_lowrank.json"])
    ap.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--grad-accumulation", type=int, default=1)
    ap.add_argument("--steps", type=int, default=30, help="steps per run (timed: those after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--nproc", type=int, default=1, help="GPUs (processes) per run: data parallel")
    ap.add_argument("--data-path", default="embedded")
    ap.add_argument("--override", action="append", default=[], help="extra config override for every run")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V;K=V",
                    help="also run each config x mode with these overrides (repeatable), e.g. "
                         "'autocast:training.precision=\"fp32\";deepspeed.torch_autocast.enabled=true'")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--keep-logs", default=None, help="copy each run's output log into this folder")
    ap.add_argument("--smoke", action="store_true")
    return ap.parse_args(argv)


def parse_variants(specs) -> list:
    """[(name, [override, ...])]; the config as it is comes first, named 'base'."""
    variants = [("base", [])]
    for spec in specs:
        name, _, rest = spec.partition(":")
        variants.append((name, [o for o in rest.split(";") if o]))
    return variants


def launch_command(config: str, mode: str, run_dir: str, args, extra=()) -> list:
    global_batch = args.micro_batch_size * args.grad_accumulation * args.nproc
    cmd = ["launchers/pretrain.py", "--config", config, "--run-dir", run_dir, "--data-path", args.data_path,
           "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(global_batch),
           "--train-steps", str(args.steps), "--log-interval", str(max(1, args.steps // 3)),
           "--eval-interval", str(10 ** 9), "--no-save",
           "--override", "self_guided.enabled=false", "--override", "training.eval_iters=1"]
    if args.data_path == "embedded":
        cmd += ["--override", 'data.tokenizer_model="embedded"']
    if mode == "compile":
        cmd.append("--compile")
    for o in (SMOKE if args.smoke else []) + args.override + list(extra):  # a variant overrides the smoke model
        cmd += ["--override", o]
    if args.nproc > 1:
        flag = "--num_accelerators" if args.smoke else "--num_gpus"
        return [shutil.which("deepspeed") or "deepspeed", flag, str(args.nproc)] + cmd
    return [sys.executable] + cmd


def summarise(config: str, mode: str, run_dir: str, args) -> dict:
    from megatron_sffn.config import load_config
    from megatron_sffn.model.accounting import model_stats, train_flops_per_token
    from megatron_sffn.training.metrics import detect_peak_tflops, read_step_log
    records = read_step_log(run_dir)
    timed = [records[s] for s in sorted(records) if s > args.warmup]
    cfg = load_config(config, [f"training.micro_batch_size={args.micro_batch_size}"])
    tokens_per_step = args.micro_batch_size * args.grad_accumulation * args.nproc * cfg.model.seq_length
    step_time = statistics.median(r["step_time_s"] for r in timed)
    flops = train_flops_per_token(model_stats(cfg.model), 0.0) * tokens_per_step
    tflops = flops / step_time / args.nproc / 1e12
    peak = detect_peak_tflops()
    return {"config": os.path.basename(config), "mode": mode, "ffn": cfg.model.ffn.kind, "nproc": args.nproc,
            "micro_batch": args.micro_batch_size, "tokens_per_step": tokens_per_step,
            "timed_steps": len(timed), "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time,
            "tokens_per_s_per_gpu": tokens_per_step / step_time / args.nproc, "tflops_per_gpu": tflops,
            "mfu": tflops / peak if peak else None,
            "max_allocated_gb": max(r["max_allocated_gb"] for r in records.values()),
            "first_loss": records[min(records)]["loss"], "final_loss": records[max(records)]["loss"]}


def environment() -> dict:
    import torch
    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        import deepspeed
        env["deepspeed"] = deepspeed.__version__
    except ImportError:
        pass
    env["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return env


def run_case(config: str, mode: str, variant: str, extra, tmp: str, args) -> dict:
    name = f"{os.path.basename(config)}-{mode}-{variant}"
    run_dir = os.path.join(tmp, name)
    cmd = launch_command(config, mode, run_dir, args, extra)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if args.keep_logs:
        os.makedirs(args.keep_logs, exist_ok=True)
        with open(os.path.join(args.keep_logs, f"{name}.log"), "w") as f:
            f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"{name}: FAILED (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}", file=sys.stderr)
        shutil.rmtree(run_dir, ignore_errors=True)
        return {"config": os.path.basename(config), "mode": mode, "variant": variant, "error": proc.returncode}
    r = summarise(config, mode, run_dir, args)
    r.update(variant=variant, overrides=list(extra))
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{r['config']:<24} {mode:<8} {variant:<10} {r['tokens_per_s']:>10,.0f} tokens/s  "
          f"{r['tflops_per_gpu']:.1f} TFLOP/s/GPU  {r['max_allocated_gb']:.1f} GB", flush=True)
    return r


def write_json(args, rows) -> None:
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "args": vars(args), "results": rows}, f, indent=2)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.configs, args.steps, args.warmup, args.micro_batch_size = ["configs/tiny_demo.json"], 4, 1, 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            for mode in args.modes:
                for variant, extra in parse_variants(args.variant):
                    rows.append(run_case(config, mode, variant, extra, tmp, args))
                    write_json(args, rows)  # after every run: a later crash or time limit keeps what was measured
    header = f"{'config':<24} {'mode':<8} {'variant':<10} {'tokens/s':>10} {'/GPU':>10} {'TFLOP/s/GPU':>12} {'MFU':>6} {'step ms':>8} {'mem GB':>7}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<24} {r['mode']:<8} {r['variant']:<10} failed (exit {r['error']})")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        print(f"{r['config']:<24} {r['mode']:<8} {r['variant']:<10} {r['tokens_per_s']:>10,.0f} {r['tokens_per_s_per_gpu']:>10,.0f} "
              f"{r['tflops_per_gpu']:>12.1f} {mfu:>6} {1000 * r['step_time_s']:>8.1f} {r['max_allocated_gb']:>7.1f}")
    write_json(args, rows)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
