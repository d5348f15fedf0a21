#!/usr/bin/env python
"""Rank the parallel layouts of a config on N GPUs by predicted step time, with the predicted
peak memory per GPU, and say why every other layout is excluded.

    python tools/plan_layout.py --config configs/6p7b_lowrank.json --gpus 4 --gpu-memory-gb 141
    python tools/plan_layout.py --config C --gpus 8 --gpu-memory-gb 80 --global-batch-size 1024 --json
    python tools/plan_layout.py --measured benchmarks/results/layout_planner_measured.json

A layout is (tensor, pipeline, data, ZeRO stage, micro-batch, activation checkpointing,
sequence parallel, and with --cuda-graphs CUDA graphs); its --override flags for launchers/pretrain.py are in the JSON. The model
and its constants (flags below; calibrated or not) are described in docs/performance.md,
"Layout planner". Exit status: 0, 1 when no layout fits, 2 on bad input.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_sffn.config import ConfigError, apply_overrides, config_from_dict, read_config_file  # noqa: E402
from megatron_sffn.model.accounting import model_stats  # noqa: E402
from megatron_sffn.planner.hardware import OPTIMIZER_PS_PER_PARAM, Hardware  # noqa: E402
from megatron_sffn.planner.layout import Layout  # noqa: E402
from megatron_sffn.planner.measured import compare_file  # noqa: E402
from megatron_sffn.planner.plan import MICRO_BATCHES, plan  # noqa: E402

CONSTANTS = [  # flag, Hardware field, help
    ("--achievable-tflops", "achievable_tflops",
     "per-GPU TFLOP/s on model FLOPs (default: per FFN kind, calibrated on 1.3B)"),
    ("--peak-tflops", "peak_tflops", "peak TFLOP/s for MFU (989: H100/H200 bf16)"),
    ("--nvlink-gb-s", "nvlink_gb_s", "NCCL bus bandwidth inside a node, GB/s (uncalibrated)"),
    ("--network-gb-s", "network_gb_s", "per-GPU bandwidth between nodes, GB/s (uncalibrated)"),
    ("--collective-latency-us", "collective_latency_us", "fixed cost per collective call (uncalibrated)"),
    ("--layer-overhead-ms", "layer_overhead_ms", "host time per block and micro-batch (calibrated, 1.3B profile)"),
    ("--host-block-ms", "host_block_ms", "host time to issue a block per micro-batch, a floor (calibrated, one H200)"),
    ("--host-block-graphs-ms", "host_block_graphs_ms", "the same with training.cuda_graphs (calibrated, one H200)"),
    ("--tp-layer-host-ms", "tp_layer_host_ms",
     "more host time per block and micro-batch under tensor parallelism (calibrated, 4 x H200)"),
    ("--tp-call-host-us", "tp_call_host_us",
     "host time per tensor-group collective call under tensor parallelism (calibrated, 4 x H200)"),
    ("--tp-overlap", "tp_overlap", "fraction of tensor-parallel collective time hidden (uncalibrated)"),
    ("--dp-overlap", "dp_overlap", "fraction of the last backward that hides the gradient reduction"),
    ("--overhead-gb", "overhead_gb", "memory outside torch's allocator count (uncalibrated)"),
    ("--fused-optimizer-ps-per-param", "fused", "fused optimizer step per parameter (calibrated, 1.3B)"),
    ("--deepspeed-optimizer-ps-per-param", "deepspeed", "DeepSpeed's optimizer step per parameter (calibrated)"),
]
RATES = ("achievable_tflops", "peak_tflops", "nvlink_gb_s", "network_gb_s")  # CONSTANTS the model divides by
OPTIMIZERS = ("fused", "deepspeed")  # CONSTANTS entries that go into Hardware.optimizer_ps_per_param


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None):
    ap = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="run config JSON")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--gpus", type=int, help="number of GPUs")
    ap.add_argument("--gpu-memory-gb", type=float, help="memory per GPU, GB = 2^30 bytes (80, 141, ...)")
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--global-batch-size", type=int, default=None, help="sequences per step (default: the config's)")
    ap.add_argument("--micro-batch-sizes", default=",".join(map(str, MICRO_BATCHES)),
                    help="candidates, comma-separated")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="also rank every layout with training.cuda_graphs (cg: compiled blocks replayed as CUDA "
                         "graphs, which pays where the host bounds a step, at small micro-batches); the config "
                         "excludes where it refuses them (pipeline, activation checkpointing, the DeepSpeed "
                         "optimizer, tensor > 1 unless MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS=1)")
    ap.add_argument("--top", type=int, default=15, help="ranked layouts to print")
    ap.add_argument("--all", action="store_true", help="print every excluded layout, not a summary")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--measured", metavar="FILE", help="predict each run listed in FILE beside its measured numbers")
    ap.add_argument("--markdown", action="store_true", help="with --measured: a Markdown table (docs/performance.md)")
    for flag, _, text in CONSTANTS:
        ap.add_argument(flag, type=float, default=None, help=text)
    args = ap.parse_args(argv)
    if args.measured is None:
        for name in ("config", "gpus", "gpu_memory_gb"):
            if getattr(args, name) is None:
                ap.error(f"--{name.replace('_', '-')} is required (or give --measured FILE)")
        if args.gpus <= 0 or args.gpu_memory_gb <= 0:
            ap.error(f"--gpus and --gpu-memory-gb must be positive, got {args.gpus} and {args.gpu_memory_gb:g}")
    if args.gpus_per_node <= 0:
        ap.error(f"--gpus-per-node must be positive, got {args.gpus_per_node}")
    try:
        args.micro_batch_sizes = [int(x) for x in args.micro_batch_sizes.split(",")]
        assert all(x > 0 for x in args.micro_batch_sizes)
    except (ValueError, AssertionError):
        ap.error(f"--micro-batch-sizes must be positive integers like 1,2,4,8, got {args.micro_batch_sizes!r}")
    if args.global_batch_size is not None and args.global_batch_size <= 0:
        ap.error(f"--global-batch-size must be positive, got {args.global_batch_size}")
    if args.top < 1:
        ap.error(f"--top must be >= 1, got {args.top}")
    for flag, field, _ in CONSTANTS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is None:
            continue
        if field in ("tp_overlap", "dp_overlap") and not 0 <= value <= 1:
            ap.error(f"{flag} is a fraction in [0, 1], got {value:g}")
        if field in RATES and value <= 0:          # divided by
            ap.error(f"{flag} must be positive, got {value:g}")
        if value < 0:                               # times, sizes: 0 models their absence
            ap.error(f"{flag} must be >= 0, got {value:g}")
    return args


def hardware(args) -> Hardware:
    given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in CONSTANTS}
    given = {k: v for k, v in given.items() if v is not None}
    optimizer = {**OPTIMIZER_PS_PER_PARAM, **{k: given.pop(k) for k in OPTIMIZERS if k in given}}
    return Hardware(gpu_memory_gb=args.gpu_memory_gb or 141.0, gpus_per_node=args.gpus_per_node,
                    optimizer_ps_per_param=optimizer, **given)


def _row(rank, p) -> str:
    s = p.step
    return (f"{rank:>4}  {p.layout.short():<26} {p.micro_batches:>4} {p.peak_gb:>6.1f} {p.peak.stage:>3} "
            f"{s.total:>7.3f} {p.tokens_per_s_per_gpu:>9,.0f} {100 * p.mfu:>5.1f}  "
            f"{s.compute:>6.3f} {s.recompute:>6.3f} {s.host:>6.3f} {s.tensor_comm:>6.3f} {s.bubble:>6.3f} "
            f"{s.data_comm + s.pipeline_p2p:>6.3f} {s.optimizer:>6.3f}")


HEADER = (f"{'rank':>4}  {'layout':<26} {'m':>4} {'GB':>6} {'stg':>3} {'step s':>7} {'tok/s/GPU':>9} {'MFU%':>5}  "
          f"{'comp':>6} {'recomp':>6} {'host':>6} {'tensor':>6} {'bubble':>6} {'dp+p2p':>6} {'optim':>6}")


def print_plan(result, raw, args, hw, own) -> None:
    m = raw["model"]
    cfg = config_from_dict(json.loads(json.dumps(raw)), cuda=True)
    stats = model_stats(cfg.model)
    batch = args.global_batch_size or cfg.training.global_batch_size
    print(f"{args.config} on {args.gpus} GPUs x {args.gpu_memory_gb:g} GB, global batch {batch} x "
          f"{m['seq_length']} tokens; {stats.total_params / 1e9:.2f}B parameters"
          + (f" (+{stats.guide_params / 1e9:.2f}B guides while self-guided)" if cfg.self_guided.enabled else "")
          + f", {stats.train_flops_per_token / 1e9:.1f} GFLOP/token")
    print("layout: t tensor, p pipeline, d data, z ZeRO stage, mb micro-batch, cg CUDA graphs; m = micro-batches "
          "per step and data rank;\nGB = predicted peak per GPU (stage stg), overhead included; times in s per step\n")
    print(HEADER)
    for i, p in enumerate(result.ranked[:args.top], 1):
        print(_row(i, p))
    print()
    for label, layout in own:
        rank = next((i for i, p in enumerate(result.ranked, 1) if p.layout == layout), None)
        where = f"rank {rank} of {len(result.ranked)}" if rank else next(
            (f"excluded: {e.reason}" for e in result.excluded if e.layout == layout), "not a candidate")
        print(f"{label} ({layout.short()}): {where}")
    print(f"\nexcluded: {len(result.excluded)} of {len(result.ranked) + len(result.excluded)} layouts")
    if args.all:
        for e in result.excluded:
            print(f"  {e.layout.short():<26} {e.reason}")
    else:
        groups = defaultdict(list)
        for e in result.excluded:
            groups["does not fit" if e.prediction is not None else e.reason].append(e)
        for reason, items in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            if reason == "does not fit":
                best = min(items, key=lambda e: e.prediction.peak_gb)
                print(f"  {len(items):>4}  predicted peak > {hw.gpu_memory_gb:g} GB (closest: "
                      f"{best.layout.short()}, {best.reason})")
            else:
                print(f"  {len(items):>4}  {reason} (e.g. {items[0].layout.short()})")
    constants = {f: v for f, v in dataclasses.asdict(hw).items() if f != "gpu_memory_gb"}
    if hw.achievable_tflops is None:
        constants["achievable_tflops"] = f"{hw.tflops_for(cfg.model.ffn.kind):g} ({cfg.model.ffn.kind})"
    print("\nconstants (docs/performance.md, 'Layout planner'): " + ", ".join(f"{f}={v}" for f, v in constants.items()))


def config_layouts(raw, gpus):
    """[(label, Layout)]: the layout the config runs as written, and each of its noted `layouts`."""
    from megatron_sffn.config import config_from_dict
    found = []
    for label, overrides in [("the config's own layout", [])] + [
            (f"its layout for {name}", list(o)) for name, o in raw.get("layouts", {}).items()]:
        try:
            cfg = config_from_dict(json.loads(json.dumps(raw)), overrides, cuda=False)  # "auto" graphs as planned
        except ConfigError:
            continue
        p, t = cfg.parallel, cfg.training
        if gpus % (p.tensor * p.pipeline) == 0:
            found.append((label, Layout(p.tensor, p.pipeline, gpus // (p.tensor * p.pipeline), p.zero_stage,
                                        t.micro_batch_size, t.activation_checkpointing,
                                        p.sequence_parallel and p.tensor > 1, t.cuda_graphs)))
    return found


def _or_dash(value, spec: str) -> str:
    width = int("".join(c for c in spec.split(".")[0] if c.isdigit()) or 0)
    return format(value, spec) if value is not None else "-".rjust(width)


def print_markdown(rows) -> None:
    print("| config | layout | global batch | device, mode | predicted GB | measured GB | error "
          "| predicted tokens/s/GPU | measured | error |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        e = r.entry
        name = e.get("label") or os.path.basename(e["config"])[:-5] + "".join(f" {o}" for o in e.get("overrides", []))
        cells = [name, r.prediction.layout.short(), str(e["global_batch_size"]),
                 f"{e.get('device', '')} {e.get('mode', '')}",
                 f"{r.predicted_allocated_gb:.1f}", _or_dash(e.get("measured_allocated_gb"), ".1f"),
                 _or_dash(r.memory_error, "+.0%"), f"{r.prediction.tokens_per_s_per_gpu:,.0f}",
                 _or_dash(e.get("measured_tokens_per_s_per_gpu"), ",.0f"), _or_dash(r.throughput_error, "+.0%")]
        print("| " + " | ".join(cells) + " |")


def run_measured(args, hw) -> int:
    rows = compare_file(args.measured, ROOT, hw)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
        return 0
    if args.markdown:
        print_markdown(rows)
        return 0
    print(f"{'config':<22} {'layout':<24} {'gbs':>4} {'pred GB':>7} {'meas GB':>7} {'err':>5} "
          f"{'pred tok/s':>10} {'meas tok/s':>10} {'err':>5}  source")
    for r in rows:
        e = r.entry
        print(f"{os.path.basename(e['config']):<22} {r.prediction.layout.short():<24} {e['global_batch_size']:>4} "
              f"{r.predicted_allocated_gb:>7.1f} {_or_dash(e.get('measured_allocated_gb'), '7.1f')} "
              f"{_or_dash(r.memory_error, '+5.0%')} {r.prediction.tokens_per_s_per_gpu:>10,.0f} "
              f"{_or_dash(e.get('measured_tokens_per_s_per_gpu'), '10,.0f')} {_or_dash(r.throughput_error, '+5.0%')}  "
              f"{e.get('source', '')}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    hw = hardware(args)
    try:
        if args.measured:
            return run_measured(args, hw)
        raw = apply_overrides(read_config_file(args.config), args.override)
        result = plan(raw, args.gpus, hw, args.global_batch_size, args.micro_batch_sizes, args.cuda_graphs)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        batch = args.global_batch_size or raw.get("training", {}).get("global_batch_size")
        print(json.dumps({"config": args.config, "gpus": args.gpus, "gpu_memory_gb": args.gpu_memory_gb,
                          "global_batch_size": batch,
                          "hardware": dataclasses.asdict(hw),
                          "ranked": [p.as_dict() for p in result.ranked],
                          "excluded": [e.as_dict() for e in result.excluded]}, indent=2))
    else:
        print_plan(result, raw, args, hw, config_layouts(raw, args.gpus))
    if not result.ranked:
        print("no layout fits", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
