"""bench_train.py --reference: the plain-PyTorch reference beside each launcher run, and the ratios.

A speed claim means something only against a reference measured on the same machine in the
same session, so bench_train runs benchmarks/bench_reference.py as one more process of its
own pool (same GPU, same config overrides, micro-batch, tokens per step and steps) and
reports megatron_sffn / reference. One reference run serves every case with the same model
shape and mode (a variant that only changes the optimizer shares it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from typing import Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
KEEP = ("params", "flops_per_token", "tokens_per_step", "precision", "step_time_s", "first_step_s", "tokens_per_s", "tflops_per_gpu", "mfu",
        "max_allocated_gb", "first_loss", "final_loss")


def reference_key(config: str, mode: str, overrides) -> str:
    """What the reference run depends on: the model after the overrides, and the mode."""
    from megatron_sffn.config import load_config
    model = dataclasses.asdict(load_config(config, list(overrides)).model)
    return json.dumps([model, mode], sort_keys=True)


def run_reference(config: str, mode: str, overrides, args, tmp: str, root: str) -> Dict:
    """One bench_reference.py process for this case; its result row, or {'error': exit code}."""
    out = os.path.join(tmp, f"reference-{len(os.listdir(tmp))}.json")
    cmd = [sys.executable, os.path.join(HERE, "bench_reference.py"), "--configs", config, "--modes", mode,
           "--micro-batch-size", str(args.micro_batch_size), "--grad-accumulation", str(args.grad_accumulation),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--data-path", args.data_path,
           "--name", f"reference {os.path.basename(config)} {mode}", "--out", out]
    for o in overrides:
        cmd += ["--override", o]
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"reference {config} {mode}: FAILED (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}",
              file=sys.stderr)
        return {"error": proc.returncode}
    with open(out) as f:
        return {k: v for k, v in json.load(f)["results"][0].items() if k in KEEP}


def attach(row: Dict, reference: Dict) -> None:
    """Add the reference's numbers and the ratios megatron_sffn / reference to a case's row."""
    row["reference"] = reference
    if "error" in row or "error" in reference:
        row["vs_reference"] = None
        return
    row["vs_reference"] = {"tokens_per_s": row["tokens_per_s"] / reference["tokens_per_s"],
                           "max_allocated_gb": row["max_allocated_gb"] / reference["max_allocated_gb"]}


def print_ratio_table(rows) -> None:
    header = (f"{'config':<24} {'mode':<8} {'variant':<10} {'ours tok/s':>11} {'ref tok/s':>11} {'speed':>7} "
              f"{'ours GB':>8} {'ref GB':>8} {'memory':>7}")
    print("\nmegatron_sffn / plain-PyTorch reference (same process pool, same device)\n" + header
          + "\n" + "-" * len(header))
    for r in rows:
        ratio: Optional[Dict] = r.get("vs_reference")
        if not ratio:
            print(f"{r['config']:<24} {r['mode']:<8} {r.get('variant', ''):<10} no ratio (a run failed)")
            continue
        ref = r["reference"]
        print(f"{r['config']:<24} {r['mode']:<8} {r['variant']:<10} {r['tokens_per_s']:>11,.0f} "
              f"{ref['tokens_per_s']:>11,.0f} {ratio['tokens_per_s']:>6.3f}x {r['max_allocated_gb']:>8.2f} "
              f"{ref['max_allocated_gb']:>8.2f} {ratio['max_allocated_gb']:>6.3f}x")
