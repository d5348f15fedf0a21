#!/usr/bin/env python
"""Whole-model training throughput through the real launcher and DeepSpeed engine.

Each case is one `launchers/pretrain.py` run (real data: the embedded corpus unless
--data-path is given; real engine: DeepSpeed with the config's ZeRO stage and precision),
timed from the run's own per-step log (run_dir/metrics.jsonl). Steps after the warm-up
(whole log windows) give the mean step time, tokens/s, model TFLOP/s per GPU (model/accounting.py, for the
config as the case runs it: variants and overrides included), MFU and peak memory. Prints a
table and writes JSON.

--reference also runs the plain-PyTorch reference (bench_reference.py) of each case's model
in the same process pool and reports megatron_sffn / reference: every speed claim is such a
ratio. --guided keeps the config's self-guided training and reports its guided phase
(MFU counting the guide FLOPs the steps executed, sgt_phase.py) against its unguided phase.

    python benchmarks/bench_train.py --configs configs/1p3b_dense.json configs/1p3b_lowrank.json \\
        --modes eager compile --micro-batch-size 8 --steps 30 --out results/train.json
    python benchmarks/bench_train.py --nproc 2 ...     # deepspeed --num_gpus 2 (data parallel)
    python benchmarks/bench_train.py --nproc 4 --emulate --override parallel.tensor=4 ...
        # rank 0 of that 4-GPU layout alone on one device: its peak memory, its compute-only step
        # (--emulate 3: rank 3, e.g. the last stage of a 4-stage pipeline)
    python benchmarks/bench_train.py --configs configs/1p3b_lowrank.json --modes compile --reference ...
    python benchmarks/bench_train.py --configs configs/1p3b_lowrank_sgt.json --guided --steps 60 --warmup 5 ...
    python benchmarks/bench_train.py --smoke           # CPU: tiny model, 2 modes, a few steps
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tools import emulate_rank  # noqa: E402  (its --collectives choices; it imports no torch at load)

SMOKE = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=256",
         "model.seq_length=32", "model.ffn.rank=16", "training.precision=fp32"]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/1p3b_dense.json", "configs/1p3b_lowrank.json"])
    ap.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--micro-batch-size", type=int, default=None, help="default 8 (2 with --smoke)")
    ap.add_argument("--grad-accumulation", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None,
                    help="steps per run (timed: those after --warmup); default 30 (4 with --smoke)")
    ap.add_argument("--warmup", type=int, default=None, help="default 10 (1 with --smoke)")
    ap.add_argument("--nproc", type=int, default=1, help="GPUs (processes) per run: data parallel")
    ap.add_argument("--emulate", nargs="?", type=int, const=0, default=None, metavar="RANK",
                    help="run only this rank (default 0) of the --nproc layout, alone on one device "
                         "(tools/emulate_rank.py: torch's fake process group): its real peak memory and its "
                         "compute-only step time; losses and communication are not real")
    ap.add_argument("--emulate-collectives", choices=emulate_rank.COLLECTIVES, default=None,
                    help="with --emulate: each traced all-gather and reduce-scatter one kernel, as an NCCL call "
                         "is (default), or the fake group's collectives as torch makes them (one copy per slot "
                         "for an all-gather); tools/emulate_rank.py --collectives")
    ap.add_argument("--data-path", default="embedded")
    ap.add_argument("--override", action="append", default=[], help="extra config override for every run")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V;K=V",
                    help="also run each config x mode with these overrides (repeatable), e.g. "
                         "'autocast:training.precision=\"fp32\";deepspeed.torch_autocast.enabled=true'")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--keep-logs", default=None, help="copy each run's output log into this folder")
    ap.add_argument("--reference", action="store_true",
                    help="also run the plain-PyTorch reference of each case (one GPU) and print the ratios")
    ap.add_argument("--guided", action="store_true",
                    help="keep self-guided training on: report the guided phase (executed FLOPs) and the "
                         "unguided phase after the drop; the main row is the unguided phase")
    ap.add_argument("--loss-after", type=int, default=0, metavar="STEP",
                    help="with --variant: each variant's loss against the base run's at every logged step "
                         "after STEP (largest relative difference; e.g. FP8 against bf16 after step 50)")
    ap.add_argument("--loss-window", type=int, default=1, metavar="N",
                    help="with --loss-after: compare means over windows of N steps, as a log line and "
                         "TensorBoard's train/loss show them at log interval N (default 1: every step)")
    ap.add_argument("--table-from", nargs="+", default=None, metavar="JSON",
                    help="run nothing: print the tables of these results files (and write them together to --out)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.reference and args.nproc != 1:
        ap.error("--reference compares against a one-GPU reference: use --nproc 1")
    if args.emulate is not None and (args.nproc < 2 or args.reference or args.guided):
        ap.error("--emulate runs one rank of an --nproc >= 2 layout alone; not with --reference or --guided")
    if args.emulate is None and args.emulate_collectives is not None:
        ap.error("--emulate-collectives applies to an emulated rank: add --emulate")
    args.emulate_collectives = args.emulate_collectives or emulate_rank.DEFAULT_COLLECTIVES
    if args.emulate is not None and not 0 <= args.emulate < args.nproc:
        ap.error(f"--emulate RANK must be in [0, --nproc {args.nproc}), got {args.emulate}")
    devices = visible_devices()
    if args.nproc > 1 and args.emulate is None and not args.smoke and devices and len(devices) < args.nproc:
        ap.error(f"--nproc {args.nproc} needs {args.nproc} GPUs, CUDA_VISIBLE_DEVICES={','.join(devices)} "
                 f"names {len(devices)}")
    for name, normal, smoke in (("micro_batch_size", 8, 2), ("steps", 30, 4), ("warmup", 10, 1)):
        if getattr(args, name) is None:
            setattr(args, name, smoke if args.smoke else normal)
    return args


def visible_devices() -> list:
    """The GPUs CUDA_VISIBLE_DEVICES names ([] when unset): two 2-GPU runs can share a 4-GPU
    machine side by side (CUDA_VISIBLE_DEVICES=0,1 and 2,3), which DeepSpeed's launcher ignores
    once --num_gpus is given, so the run names them with --include instead."""
    return [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]


def parse_variants(specs) -> list:
    """[(name, [override, ...])]; the config as it is comes first, named 'base'."""
    variants = [("base", [])]
    for spec in specs:
        name, _, rest = spec.partition(":")
        variants.append((name, [o for o in rest.split(";") if o]))
    return variants


def run_overrides(args, extra=()) -> list:
    """Every config override a case's launcher run gets; its FLOPs and its reference read the same."""
    out = ([] if args.guided else ["self_guided.enabled=false"]) + ["training.eval_iters=1"]
    if args.data_path == "embedded":
        out.append('data.tokenizer_model="embedded"')
    if getattr(args, "emulate", None) is not None:  # shards never meet: losses may be non-finite, memory is still real
        out.append("training.max_nonfinite_steps=1000000000")
    return out + (SMOKE if args.smoke else []) + args.override + list(extra)  # a variant overrides the smoke model


def log_interval(args) -> int:
    """The loop waits for the device only at log steps, so a step's own time is exact only there:
    timed steps must be whole log windows (the warm-up and the run end on a log step); --guided
    logs every step, because its phases and left-out compile steps are single steps."""
    if args.guided:
        return 1
    return math.gcd(args.warmup, args.steps) or args.steps


def launch_command(config: str, mode: str, run_dir: str, args, extra=()) -> list:
    global_batch = args.micro_batch_size * args.grad_accumulation * args.nproc
    cmd = ["launchers/pretrain.py", "--config", config, "--run-dir", run_dir, "--data-path", args.data_path,
           "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(global_batch),
           "--train-steps", str(args.steps), "--log-interval", str(log_interval(args)),
           "--eval-interval", str(10 ** 9), "--no-save"]
    # explicit, not the config's "auto": eager means eager on a GPU too, and graphs only where a variant asks
    cmd += ["--compile" if mode == "compile" else "--no-compile", "--override", "training.cuda_graphs=false"]
    for o in run_overrides(args, extra):
        cmd += ["--override", o]
    if args.emulate is not None:
        return [sys.executable, "tools/emulate_rank.py", "--world", str(args.nproc), "--rank", str(args.emulate),
                "--collectives", args.emulate_collectives, "--"] + cmd
    if args.nproc > 1:
        from megatron_sffn.parallel.launch import free_port
        # its own rendezvous port: a run beside another one does not meet it at DeepSpeed's 29500
        launcher = [shutil.which("deepspeed") or "deepspeed", "--master_port", str(free_port())]
        devices = visible_devices()
        if devices and not args.smoke:
            return launcher + ["--include", "localhost:" + ",".join(devices[:args.nproc])] + cmd
        flag = "--num_accelerators" if args.smoke else "--num_gpus"
        return launcher + [flag, str(args.nproc)] + cmd
    return [sys.executable] + cmd


def run_config(config: str, args, extra=(), mode: str = "eager"):
    """The config exactly as the case's launcher run builds it (overrides, variant, batch, steps,
    --compile: a variant's training.cuda_graphs needs it to validate)."""
    from megatron_sffn.config import load_config
    global_batch = args.micro_batch_size * args.grad_accumulation * args.nproc
    return load_config(config, [f"training.compile={'true' if mode == 'compile' else 'false'}",
                                "training.cuda_graphs=false"] +
                       run_overrides(args, extra) + [
        f"training.micro_batch_size={args.micro_batch_size}", f"training.global_batch_size={global_batch}",
        f"training.train_steps={args.steps}", "training.train_tokens=null"])


def summarise(config: str, mode: str, run_dir: str, args, extra=()) -> dict:
    from megatron_sffn.model.accounting import model_stats, train_flops_per_token
    from megatron_sffn.training.metrics import detect_peak_tflops, read_step_log
    records = read_step_log(run_dir)
    cfg = run_config(config, args, extra, mode)  # the variant's own shape: its FLOPs, not the base config's
    tokens_per_step = args.micro_batch_size * args.grad_accumulation * args.nproc * cfg.model.seq_length
    peak = detect_peak_tflops()
    phases = {}
    if args.guided:
        from sgt_phase import summarise_phases
        phases = summarise_phases(cfg, records, args.warmup, tokens_per_step, args.nproc, peak)
    timed_steps = phases["unguided_phase"]["steps"] if phases else [s for s in sorted(records) if s > args.warmup]
    if not timed_steps:
        raise ValueError(f"no timed steps in {run_dir}: raise --steps above --warmup ({args.warmup})")
    # mean, not median: between log steps a step's time is the host's, the wait for the device
    # lands on the window's log step; a window's sum is its wall time
    step_time = statistics.fmean(records[s]["step_time_s"] for s in timed_steps)
    flops = train_flops_per_token(model_stats(cfg.model), 0.0) * tokens_per_step
    tflops = flops / step_time / args.nproc / 1e12
    return {"config": os.path.basename(config), "mode": mode, "ffn": cfg.model.ffn.kind, "nproc": args.nproc,
            "emulated": getattr(args, "emulate", None) is not None, "emulated_rank": getattr(args, "emulate", None),
            "emulated_collectives": (getattr(args, "emulate_collectives", emulate_rank.DEFAULT_COLLECTIVES)
                                     if getattr(args, "emulate", None) is not None else None),
            "micro_batch": args.micro_batch_size, "tokens_per_step": tokens_per_step, "flops_per_step": flops,
            "timed_steps": len(timed_steps), "step_time_s": step_time, "tokens_per_s": tokens_per_step / step_time,
            "tokens_per_s_per_gpu": tokens_per_step / step_time / args.nproc, "tflops_per_gpu": tflops,
            "mfu": tflops / peak if peak else None,
            "max_allocated_gb": max(r["max_allocated_gb"] for r in records.values()),
            "max_allocated_gb_per_step": [records[s]["max_allocated_gb"] for s in sorted(records)],
            # under training.cuda_graphs the allocated counters miss the graphs' pool: read this one
            "max_reserved_gb": max((r["max_reserved_gb"] for r in records.values() if "max_reserved_gb" in r),
                                   default=None),
            "first_loss": records[min(records)]["loss"], "final_loss": records[max(records)]["loss"],
            "losses": [records[s]["loss"] for s in sorted(records)], "loss_steps": sorted(records),
            "step_times_s": [records[s]["step_time_s"] for s in sorted(records)], **phases}


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
    if args.keep_logs and os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        shutil.copy(os.path.join(run_dir, "metrics.jsonl"), os.path.join(args.keep_logs, f"{name}.metrics.jsonl"))
    r = summarise(config, mode, run_dir, args, extra)
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


def reference_for(config: str, mode: str, extra, tmp: str, args, cache: dict) -> dict:
    """The reference row of this case's model and mode, run once per distinct shape."""
    import vs_reference
    overrides = run_overrides(args, extra)
    key = vs_reference.reference_key(config, mode, overrides)
    if key not in cache:
        cache[key] = vs_reference.run_reference(config, mode, overrides, args, tmp, ROOT)
    return cache[key]


def print_table(rows) -> None:
    header = (f"{'config':<24} {'mode':<8} {'variant':<10} {'tokens/s':>10} {'/GPU':>10} {'TFLOP/s/GPU':>12} "
              f"{'MFU':>6} {'step ms':>8} {'mem GB':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['config']:<24} {r['mode']:<8} {r['variant']:<10} failed (exit {r['error']})")
            continue
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] else "n/a"
        print(f"{r['config']:<24} {r['mode']:<8} {r['variant']:<10} {r['tokens_per_s']:>10,.0f} "
              f"{r['tokens_per_s_per_gpu']:>10,.0f} {r['tflops_per_gpu']:>12.1f} {mfu:>6} "
              f"{1000 * r['step_time_s']:>8.1f} {r['max_allocated_gb']:>7.1f}"
              + (f"  emulated rank {r.get('emulated_rank') or 0}: no communication" if r.get("emulated") else "")
              + (" (torch's fake collectives)" if r.get("emulated_collectives") == "torch" else ""))


def print_guided_table(rows) -> None:
    header = (f"{'config':<24} {'mode':<8} {'phase':<9} {'steps':>5} {'tokens/s':>10} {'TFLOP/s/GPU':>12} "
              f"{'MFU':>6} {'guide FLOPs done':>17}")
    print("\nself-guided run: guided phase (executed FLOPs) vs unguided phase\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "guided_phase" not in r:
            continue
        for name in ("guided", "unguided"):
            p = r[f"{name}_phase"]
            if not p["steps"]:
                print(f"{r['config']:<24} {r['mode']:<8} {name:<9} no timed steps")
                continue
            mfu = f"{100 * p['mfu']:.1f}%" if p["mfu"] else "n/a"
            done = f"{100 * p['guide_fraction_executed']:.1f}%" if "guide_fraction_executed" in p else "-"
            print(f"{r['config']:<24} {r['mode']:<8} {name:<9} {len(p['steps']):>5} {p['tokens_per_s']:>10,.0f} "
                  f"{p['tflops_per_gpu']:>12.1f} {mfu:>6} {done:>17}")
        ratio = r["guided_mfu_over_unguided"]
        print(f"{'':<24} {'':<8} guided MFU / unguided MFU = " + (f"{ratio:.3f}" if ratio else "n/a"))
        if r.get("compile_steps_excluded"):
            print(f"{'':<24} {'':<8} left out, graphs compiled in them: steps {r['compile_steps_excluded']}")


def compare_losses(rows, after: int, window: int = 1) -> None:
    """A variant's curve against its base run's (same config and mode): means over windows of
    `window` steps ending at each multiple of it after `after` (a log interval's logged loss),
    where both runs have every step; the largest |variant - base| / |base|, stored in the
    variant's row."""
    bases = {(r["config"], r["mode"]): r for r in rows if r.get("variant") == "base" and "error" not in r}
    for row in rows:
        row.pop("loss_vs_base", None)  # saved results (--table-from) are compared again, as asked now
        base = bases.get((row["config"], row["mode"]))
        if (row.get("variant") == "base" or "error" in row or base is None or "loss_steps" not in row
                or row.get("emulated")):  # an emulated rank's losses are not real (collectives move nothing)
            continue
        theirs, ours = dict(zip(base["loss_steps"], base["losses"])), dict(zip(row["loss_steps"], row["losses"]))
        diffs = []
        for end in (s for s in sorted(ours) if s > after and s % window == 0):
            steps = range(end - window + 1, end + 1)
            if all(s in ours and s in theirs for s in steps):
                mine, base_mean = (sum(d[s] for s in steps) / window for d in (ours, theirs))
                if base_mean:
                    diffs.append((abs(mine - base_mean) / abs(base_mean), end))
        if diffs:
            worst, at = max(diffs)
            row["loss_vs_base"] = {"after_step": after, "window": window, "steps": len(diffs), "max_rel_diff": worst,
                                   "at_step": at, "mean_rel_diff": sum(d for d, _ in diffs) / len(diffs)}


def print_loss_table(rows) -> None:
    header = f"{'config':<24} {'mode':<8} {'variant':<10} {'steps':>5} {'largest |diff|':>15} {'at step':>8} {'mean':>7}"
    compared = [r for r in rows if "loss_vs_base" in r]
    first = compared[0]["loss_vs_base"]
    print(f"\nloss against the base run, logged steps after step {first['after_step']}"
          + (f" (means over {first['window']} steps)" if first.get("window", 1) > 1 else "") + "\n"
          + header + "\n" + "-" * len(header))
    for r in compared:
        c = r["loss_vs_base"]
        print(f"{r['config']:<24} {r['mode']:<8} {r['variant']:<10} {c['steps']:>5} {100 * c['max_rel_diff']:>14.2f}% "
              f"{c['at_step']:>8} {100 * c['mean_rel_diff']:>6.2f}%")


def print_tables(rows) -> None:
    print_table(rows)
    if any("loss_vs_base" in r for r in rows):
        print_loss_table(rows)
    if any("guided_phase" in r for r in rows):
        print_guided_table(rows)
    if any("reference" in r for r in rows):
        import vs_reference
        vs_reference.print_ratio_table([r for r in rows if "reference" in r])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table_from:
        rows = []
        for path in args.table_from:
            with open(path) as f:
                data = json.load(f)
            if not isinstance(data, dict) or "results" not in data:  # another script's JSON in the same folder
                print(f"skipped {path}: not a bench_train.py results file", file=sys.stderr)
                continue
            rows += data["results"]
        if args.loss_after or args.loss_window > 1:
            compare_losses(rows, args.loss_after, args.loss_window)
        print_tables(rows)
        write_json(args, rows)
        return 0
    if args.smoke:
        args.configs = ["configs/tiny_demo.json"]
    rows, references = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            for mode in args.modes:
                for variant, extra in parse_variants(args.variant):
                    rows.append(run_case(config, mode, variant, extra, tmp, args))
                    if args.reference:
                        import vs_reference
                        vs_reference.attach(rows[-1], reference_for(config, mode, extra, tmp, args, references))
                    write_json(args, rows)  # after every run: a later crash or time limit keeps what was measured
    compare_losses(rows, args.loss_after, args.loss_window)
    print_tables(rows)
    write_json(args, rows)
    return 1 if any("error" in r or "error" in r.get("reference", {}) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
