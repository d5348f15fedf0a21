"""Scaling benchmark: the whole training step (TrainEngine over DeepSpeed) under a layout.

One run (under any launcher) measures, for one config and (tensor, pipe, data) layout:
  step time        median over the timed steps, after warm-up steps
  tokens/s         global batch tokens / step time
  TFLOP/s per GPU  model FLOPs (model/accounting.py) / step time / world size, and MFU
                   when the device's peak is known
  memory           peak allocated bytes (CUDA)
  traffic          bytes per step through the tensor-, data- and pipeline-parallel groups,
                   counted in one extra untimed step by wrapping torch.distributed's
                   collectives (all_reduce, all-gather, reduce-scatter, broadcast, send/recv):
                   `payload` is each collective's full tensor (all-reduce: the tensor,
                   all-gather: its output, reduce-scatter: its input), `wire` the bytes one
                   rank sends in a ring over the group's n ranks (all-reduce 2 (n-1)/n of the
                   payload, all-gather and reduce-scatter (n-1)/n, broadcast and p2p all), the
                   figure that compares an all-reduce with sequence parallelism's
                   reduce-scatter + all-gather
Data are random token ids (the input pipeline has its own benchmark, bench_data.py).

  torchrun --nproc_per_node 8 benchmarks/bench_scaling.py --config configs/1p3b_lowrank.json \\
      --override parallel.tensor=2 --override parallel.pipeline=2 --steps 20 --out r.json
Sweep of layouts on one host (one torchrun per layout, results in one JSON):
  python benchmarks/bench_scaling.py --config configs/1p3b_lowrank.json --nproc 8 \\
      --sweep 1x1x8,2x1x4,2x2x2,1x2x4 --out results/scaling.json
Layouts may end in "sp" for sequence parallelism: --sweep 2x1x2,2x1x2sp.
CPU smoke test (tiny model, 2 processes, gloo): python benchmarks/bench_scaling.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMOKE_MODEL = ["model.vocab_size=512", "model.hidden_size=64", "model.num_layers=4", "model.num_heads=4",
               "model.ffn_hidden_size=256", "model.seq_length=64", "model.ffn.kind=lowrank", "model.ffn.rank=16",
               "training.micro_batch_size=2", "training.global_batch_size=8", "training.precision=fp32",
               "training.train_steps=10"]
SMOKE_LAYOUTS = "1x1x2,2x1x1,1x2x1"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/tiny_demo.json")
    ap.add_argument("--override", action="append", default=[], help="key.path=value (repeatable)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sweep", default=None, help="comma-separated TxPxD layouts, one torchrun each")
    ap.add_argument("--nproc", type=int, default=None, help="processes per sweep run (default: T*P*D)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU model, 2 processes, a few layouts")
    ap.add_argument("--out", default=None, help="JSON file to write (rank 0)")
    ap.add_argument("--profile", default=None, metavar="TXT",
                    help="after timing, profile steps (torch.profiler) and write the top kernels here (rank 0), "
                         "then one step under cProfile (TXT's name + _python.txt)")
    ap.add_argument("--profile-steps", type=int, default=3, help="steps under torch.profiler (default 3)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------- one run

GATHERS = ("all_gather_into_tensor", "all_gather_single")
SCATTERS = ("reduce_scatter_tensor", "reduce_scatter_single")
P2P = ("send", "recv", "isend", "irecv")


def _full_tensor(name: str, args, kwargs):
    """The collective's full-size tensor: reduce-scatter's input, otherwise the first tensor."""
    if name in SCATTERS:
        return args[1] if len(args) > 1 else kwargs.get("input", kwargs.get("input_tensor"))
    if args:
        return args[0]
    for key in ("tensor", "output_tensor", "output"):
        if key in kwargs:
            return kwargs[key]
    raise TypeError(f"{name}: no tensor among its arguments")


def payload_and_wire(name: str, args, group_size: int, kwargs=None):
    """(full tensor bytes, bytes one rank sends in a ring) of one collective call."""
    full = _full_tensor(name, args, kwargs or {})
    payload = full.numel() * full.element_size()
    share = (group_size - 1) / group_size if group_size > 1 else 0.0
    if name == "all_reduce":
        return payload, 2 * share * payload
    if name in GATHERS + SCATTERS:
        return payload, share * payload
    return payload, float(payload)


class TrafficCounter:
    """Bytes through each process group, by wrapping torch.distributed's collectives:
    `bytes[group]` the payload, `wire[group]` what one rank sends (payload_and_wire)."""

    NAMES = ("all_reduce", "broadcast") + GATHERS + SCATTERS + P2P

    def __init__(self, groups: dict):
        import torch.distributed as dist
        self.dist, self.groups = dist, groups
        self.bytes = defaultdict(int)
        self.wire = defaultdict(float)
        self._originals = {}

    def _group_name(self, group):
        for name, handle in self.groups.items():
            if handle is group:
                return name
        return "world" if group is None else "other"

    def __enter__(self):
        for name in self.NAMES:
            original = getattr(self.dist, name, None)
            if original is None:  # a name this torch does not have
                continue
            self._originals[name] = original

            def counting(*args, _original=original, _name=name, **kwargs):
                handle = kwargs.get("group")
                group = "p2p" if _name in P2P else self._group_name(handle)
                size = 1 if _name in P2P else self.dist.get_world_size(handle)
                payload, wire = payload_and_wire(_name, args, size, kwargs)
                self.bytes[group] += payload
                self.wire[group] += wire
                return _original(*args, **kwargs)
            setattr(self.dist, name, counting)
        return self

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(self.dist, name, original)


def random_batches(cfg, data_size: int, seed: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    t, m = cfg.training, cfg.model
    for _ in range(t.global_batch_size // (t.micro_batch_size * data_size)):
        tokens = torch.randint(0, m.vocab_size, (t.micro_batch_size, m.seq_length + 1), generator=g)
        yield tokens[:, :-1], tokens[:, 1:]


def run_once(args) -> dict:
    import torch
    import torch.distributed as dist

    from megatron_sffn.config import load_config
    from megatron_sffn.model.accounting import model_stats, train_flops_per_token
    from megatron_sffn.parallel.topology import build_parallel_state, init_distributed
    from megatron_sffn.structured.guide import GuideState
    from megatron_sffn.training.engine import TrainEngine
    from megatron_sffn.training.metrics import detect_peak_tflops

    init_distributed()
    cfg = load_config(args.config, args.override, world_size=dist.get_world_size())
    state = build_parallel_state(cfg)
    guided = cfg.self_guided.enabled
    guide_state = GuideState(active=guided, seed=cfg.training.seed, reduce_flop=cfg.self_guided.reduce_flop)
    engine = TrainEngine.build(cfg, state, guide_state, guided=guided)
    engine.set_lr(cfg.optimizer.lr)
    times, losses = [], []
    for step in range(args.warmup + args.steps):
        guide_state.step = step
        batches = random_batches(cfg, state.data_size, seed=step * 1000 + state.data_rank)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        losses.append(engine.train_batch(batches))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - started)
    groups = {"tensor": state.tensor_group, "data": state.data_group, "pipe": state.pipe_group}
    if engine.uses_pipeline:  # DeepSpeed's pipeline engine reduces over its own grid's groups
        grid = engine.ds.grid
        groups.update({"data (grid)": grid.get_data_parallel_group(), "pipe (grid)": grid.get_pipe_parallel_group(),
                       "tensor (grid)": grid.get_slice_parallel_group()})
        for i, (_, group) in enumerate(engine.module.get_tied_weights_and_groups()):
            groups[f"tied embedding {i}"] = group
    with TrafficCounter(groups) as traffic:
        engine.train_batch(random_batches(cfg, state.data_size, seed=123))
    if args.profile:
        profile_steps(engine, cfg, state, args.profile, steps=args.profile_steps, timed_step_s=statistics.median(times))
    step_time = statistics.median(times)
    tokens = cfg.training.global_batch_size * cfg.model.seq_length
    guide_fraction = (1.0 if not cfg.self_guided.reduce_flop else guide_state.alpha) if guided else 0.0
    tflops = train_flops_per_token(model_stats(cfg.model), guide_fraction) * tokens / step_time / state.world_size / 1e12
    peak = detect_peak_tflops(cfg.training.peak_tflops_per_gpu)
    traffic_all = [None] * state.world_size
    dist.all_gather_object(traffic_all, (dict(traffic.bytes), dict(traffic.wire)))
    return {
        "config": args.config, "overrides": args.override, "precision": cfg.training.precision,
        "zero_stage": cfg.parallel.zero_stage, "ffn": cfg.model.ffn.kind,
        "layout": {"tensor": state.tensor_size, "pipe": state.pipe_size, "data": state.data_size,
                   "sequence_parallel": state.tp.sequence_sharded},
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "step_time_s": step_time, "step_times_s": times, "tokens_per_s": tokens / step_time,
        "tflops_per_gpu": tflops, "mfu": tflops / peak if peak else None,
        "max_allocated_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None,
        "max_reserved_gb": torch.cuda.max_memory_reserved() / 2 ** 30 if torch.cuda.is_available() else None,
        "traffic_bytes_per_step_rank0": traffic_all[0][0], "wire_bytes_per_step_rank0": traffic_all[0][1],
        "loss_first_last": [losses[0], losses[-1]],
        "rank": state.rank,
    }


def profile_steps(engine, cfg, state, path: str, steps: int = 3, timed_step_s=None) -> None:
    """Kernel time table of a few steps (sorted by device time), preceded by the busy/idle
    summary of benchmarks/profile_summary.py; its JSON goes next to the table."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from profile_summary import events_of, summarize
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for step in range(steps):
            engine.train_batch(random_batches(cfg, state.data_size, seed=7 + step))
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_ms = 1000 * (time.perf_counter() - started) / steps
    if state.rank == 0:
        summary, text = summarize(*events_of(prof), steps=steps, wall_ms_per_step=wall_ms)
        summary["unprofiled_step_ms"] = 1000 * timed_step_s if timed_step_s else None
        key = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
        with open(path, "w") as f:
            f.write(f"{steps} steps, {cfg.model.ffn.kind}, micro-batch {cfg.training.micro_batch_size}, "
                    f"global {cfg.training.global_batch_size}, optimizer {cfg.optimizer.implementation}, "
                    f"compile {cfg.training.compile}; unprofiled step "
                    f"{summary['unprofiled_step_ms'] or float('nan'):.1f} ms\n{text}\n\n")
            f.write(prof.key_averages().table(sort_by=key, row_limit=60, max_name_column_width=90))
        with open(os.path.splitext(path)[0] + ".json", "w") as f:
            json.dump(summary, f, indent=2)
        print(text, flush=True)
    python_profile(engine, cfg, state, os.path.splitext(path)[0] + "_python.txt")


def python_profile(engine, cfg, state, path: str) -> None:
    """One more step under cProfile: the host's Python functions by own time, which
    torch.profiler's op table leaves out (a host-bound rank's step is mostly Python between
    ops: the engine, hooks, the compiled regions' guards and wrappers). cProfile slows Python
    calls, so read the shares, not the times."""
    import cProfile
    import io
    import pstats
    profiler = cProfile.Profile()
    batches = random_batches(cfg, state.data_size, seed=99)
    profiler.enable()
    engine.train_batch(batches)
    profiler.disable()
    if state.rank == 0:
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(45)
        stats.sort_stats("cumulative").print_stats(45)
        with open(path, "w") as f:
            f.write(text.getvalue())


# ---------------------------------------------------------------------------- sweep

def sweep(args) -> list:
    results = []
    for layout in args.sweep.split(","):
        sequence_parallel = layout.lower().endswith("sp")
        t, p, d = (int(x) for x in layout.lower().removesuffix("sp").split("x"))
        nproc = args.nproc or t * p * d
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "run.json")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
                   str(_free_port()), os.path.abspath(__file__), "--config", args.config, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--out", out,
                   "--override", f"parallel.tensor={t}", "--override", f"parallel.pipeline={p}",
                   "--override", f"parallel.sequence_parallel={'true' if sequence_parallel else 'false'}"]
            for o in args.override:
                cmd += ["--override", o]
            env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"layout {layout}: failed\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", file=sys.stderr)
                results.append({"layout": layout, "error": proc.stderr[-2000:]})
                continue
            results.append(json.load(open(out)))
            _print_row(results[-1])
    return results


def _free_port() -> int:
    from megatron_sffn.parallel.launch import free_port
    return free_port()


def _print_row(r: dict) -> None:
    lay = r["layout"]
    traffic = ", ".join(f"{k} {v / 2 ** 20:.2f} MiB" for k, v in sorted(r["wire_bytes_per_step_rank0"].items()))
    sp = " sp" if lay.get("sequence_parallel") else ""
    print(f"t{lay['tensor']} p{lay['pipe']} d{lay['data']}{sp} | {r['ffn']} {r['precision']} ZeRO {r['zero_stage']} | "
          f"step {r['step_time_s'] * 1e3:.1f} ms | {r['tokens_per_s']:,.0f} tok/s | "
          f"{r['tflops_per_gpu']:.3f} TFLOP/s/GPU | rank-0 wire bytes/step: {traffic}", flush=True)


def main(argv=None) -> int:
    from local_ranks import leave_and_exit
    args = parse_args(argv)
    if args.smoke:
        args.override = SMOKE_MODEL + args.override
        args.sweep = args.sweep or SMOKE_LAYOUTS
        args.nproc = args.nproc or 2
        args.steps, args.warmup = min(args.steps, 3), 1
    if args.sweep:
        results = sweep(args)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2)
        return 0 if all("error" not in r for r in results) else 1
    result = run_once(args)
    if result["rank"] == 0:
        _print_row(result)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(result, f, indent=2)
    leave_and_exit(0)


if __name__ == "__main__":
    sys.exit(main())
