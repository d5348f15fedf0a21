#!/usr/bin/env python
"""Decoding speed, eager vs CUDA graphs, with and without pre-merge. Prints a table, writes JSON.

Seeded weights of a config (as tools/generate.py --config), greedy decoding of random prompts.
Per (pre-merge, batch, mode) it measures
  ms/token      median time of one decode step in steady state, as generate() runs it
                (model step or graph replay, argmax, the token read back to the host)
  decode tok/s  batch / that step time
  generate tok/s  whole generate() calls: prefill, graph capture and every step (median of --repeats)
  capture ms    the graph's warm-up and capture (first step), graphs only
and whether the graph's tokens equal the eager ones (bf16: attention over the full cache with
a mask rounds differently from attention over the filled part, so near-ties may flip).

    python benchmarks/bench_decode.py --config configs/1p3b_lowrank.json --batch 1 16 --new-tokens 64 \\
        --out benchmarks/results/decode.json
    python benchmarks/bench_decode.py --smoke     # CPU: tiny model, eager only (graphs need CUDA)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from megatron_sffn.inference.cuda_graph import DecodeGraph  # noqa: E402
from megatron_sffn.inference.generation import SamplingConfig, generate  # noqa: E402
from megatron_sffn.inference.premerge import DEFAULT_CALIBRATION, apply_premerge, load_thresholds  # noqa: E402
from tools.generate import initialised_model  # noqa: E402

SMOKE = dict(config="configs/tiny_demo.json", batch=[1, 2], new_tokens=6, prompt_len=8, repeats=1)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/1p3b_lowrank.json")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--pre-merge", nargs="+", choices=["off", "on", "auto"], default=["off", "on"],
                    help="on: merged matrices at every token count; auto: thresholds from --calibration-file")
    ap.add_argument("--calibration-file", default=DEFAULT_CALIBRATION)
    ap.add_argument("--modes", nargs="+", choices=["eager", "graphs"], default=["eager", "graphs"])
    ap.add_argument("--repeats", type=int, default=3, help="timed generate() calls per case")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--out", default=None, help="JSON results (rewritten after every case)")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if not args.device.startswith("cuda") and "graphs" in args.modes:
        print("note: CUDA graphs need a CUDA device; measuring eager only", file=sys.stderr)
        args.modes = ["eager"]
    return args


def environment(device) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "host": platform.node(), "device": "cpu"}
    if torch.device(device).type == "cuda":
        env["device"] = torch.cuda.get_device_name(device)
    return env


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def step_times(model, prompts, new_tokens: int, graphs: bool):
    """(capture seconds or None, [seconds of each later step]): generate()'s decode loop, timed."""
    device = next(model.parameters()).device
    ids = torch.tensor(prompts, device=device)
    cache = model.new_cache(len(prompts), ids.shape[1] + new_tokens)
    token = model(ids, cache)[:, -1].argmax(dim=-1)
    step = DecodeGraph(model, cache) if graphs else (lambda t: model(t[:, None], cache)[:, -1])
    times, capture = [], None
    for i in range(new_tokens - 1):
        sync(device)
        start = time.perf_counter()
        token = step(token).argmax(dim=-1)
        token.tolist()  # generate() reads every token back; this is also the sync
        elapsed = time.perf_counter() - start
        if graphs and i == 0:
            capture = elapsed
        else:
            times.append(elapsed)
    return capture, times


def generate_seconds(model, prompts, sampling, graphs: bool, repeats: int):
    """(median seconds of a whole generate() call, its tokens)."""
    device = next(model.parameters()).device
    generate(model, prompts, SamplingConfig(max_new_tokens=2, temperature=0.0), cuda_graphs=graphs)  # warm-up
    seconds = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        tokens = generate(model, prompts, sampling, cuda_graphs=graphs)
        sync(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), tokens


def run_case(model, args, premerge: str, batch: int, mode: str, gen: torch.Generator) -> dict:
    prompts = torch.randint(0, model.cfg.vocab_size, (batch, args.prompt_len), generator=gen).tolist()
    graphs = mode == "graphs"
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.0)
    capture, times = step_times(model, prompts, args.new_tokens, graphs)
    seconds, tokens = generate_seconds(model, prompts, sampling, graphs, args.repeats)
    step_s = statistics.median(times)
    return {"pre_merge": premerge, "batch": batch, "mode": mode, "ms_per_token": 1e3 * step_s,
            "decode_tokens_per_s": batch / step_s, "generate_tokens_per_s": batch * args.new_tokens / seconds,
            "generate_s": seconds, "capture_ms": None if capture is None else 1e3 * capture,
            "steps_timed": len(times), "tokens": tokens}


def print_row(r: dict, eager_ms=None) -> None:
    speedup = f"{eager_ms / r['ms_per_token']:8.2f}x" if eager_ms else f"{'':>9}"
    capture = f"{r['capture_ms']:10.1f}" if r["capture_ms"] is not None else f"{'-':>10}"
    same = {True: "yes", False: "no", None: "-"}[r.get("same_tokens_as_eager")]
    print(f"{r['pre_merge']:>9} {r['batch']:>5} {r['mode']:>6} {r['ms_per_token']:11.3f} "
          f"{r['decode_tokens_per_s']:12.1f} {r['generate_tokens_per_s']:14.1f} {capture} {speedup} {same:>6}",
          flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model, cfg = initialised_model(os.path.join(ROOT, args.config) if not os.path.isabs(args.config)
                                   else args.config, args.device, dtype)
    results = {"env": environment(args.device), "config": args.config, "dtype": args.dtype,
               "new_tokens": args.new_tokens, "prompt_len": args.prompt_len, "repeats": args.repeats, "cases": []}
    env = results["env"]
    print(f"== {env['device']} | torch {env['torch']} | CUDA {env['cuda']} | {args.config} | {args.dtype} | "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens | {env['date']}")
    print(f"{'pre-merge':>9} {'batch':>5} {'mode':>6} {'ms/token':>11} {'decode tok/s':>12} "
          f"{'generate tok/s':>14} {'capture ms':>10} {'vs eager':>9} {'same':>6}")
    for premerge in args.pre_merge:
        chosen = apply_premerge(model, premerge, load_thresholds(args.calibration_file, args.device))
        for batch in args.batch:
            eager = None
            for mode in args.modes:
                r = run_case(model, args, premerge, batch, mode, torch.Generator().manual_seed(batch))
                r["pre_merge_thresholds"] = chosen
                if mode == "eager":
                    eager = r
                else:
                    r["same_tokens_as_eager"] = None if eager is None else r["tokens"] == eager["tokens"]
                print_row(r, eager["ms_per_token"] if eager and r is not eager else None)
                results["cases"].append(r)
                if args.out:
                    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                    with open(args.out, "w") as f:
                        json.dump(results, f, indent=1)
    if args.out:
        print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
