#!/usr/bin/env python
"""Host work per training step: the launcher's own step on a model too narrow to compute.

The 1.3B step on a GPU loses ~8 ms to idle time in which the device waits for Python (the
engine, hooks, the loop's bookkeeping) or the host waits for the device (a `.item()`). This
measures that host side alone, on any machine (a CPU is enough): each case runs the real
path of `launchers/pretrain.py` in-process (its argument parser and config loader, then
`training.loop.Trainer`: DeepSpeed's engine built by the project's own engine code, the fused
mixed-precision optimizer `optimizer.implementation = auto` picks, compiled blocks with
`--compile`, the embedded corpus, logging every `--log-interval` steps) on the config's own
layer count and parameter structure (24 blocks, the same parameter tensors, FFN kind, first
layer dense, tied embedding) at tiny widths (hidden 64, FFN 256, rank 16, a few tokens), so
a step's compute is negligible and its time is host time.

Reported per step (median over the timed steps, ms): forward (the DeepSpeed engine's call,
its hooks included), backward (`engine.backward`), optimizer step (`engine.step`, of which the
optimizer's own `step`), and the loop's bookkeeping (the rest: data, LR, metrics, logging,
stop checks); and, counted over further steps under `training/host_syncs.py`'s SyncCounter,
the host<->device synchronisations per non-logging step and per logging step (`.item()` and
friends, value-dependent shapes, device->host copies, explicit synchronize calls). On a CPU
the kernels run on the host too, so the times are an upper bound of the host's share; the
sync counts are what a GPU run makes. --reference adds the plain-PyTorch script's step
(benchmarks/bench_reference.py) on the same tiny model. Prints a table and writes JSON.

    python benchmarks/diagnostics/bench_host_overhead.py --out benchmarks/results/host_overhead_cpu.json
    python benchmarks/diagnostics/bench_host_overhead.py --configs configs/1p3b_lowrank.json --modes eager compile --reference

--tensor-parallel T runs every case in T processes over gloo (started here, the way torchrun
would: RANK, WORLD_SIZE, MASTER_*; one CPU thread each) as tensor T, and beside it tensor 1 x
data T on the same processes and widths (add --sequence-parallel for the SP case too). Each
collective call (and each asynchronous one's wait) is timed and taken out of its phase: on a
CPU, gloo collectives block and cost real time (the peer's skew included), which on a GPU is
the device's. The table then gives host ms per block per micro-batch ((forward + backward -
collectives) / layers, one micro-batch per step) and its excess over tensor 1.
--profile adds a cProfile run of rank 0's timed steps (its own run: the profiler slows
Python down) and lists the top functions by own and cumulative time, with calls per block
per micro-batch.

    python benchmarks/diagnostics/bench_host_overhead.py --configs configs/1p3b_lowrank.json --modes eager \
        --tensor-parallel 2 --sequence-parallel --profile --out benchmarks/results/host_overhead_tp2_cpu.json

Under --modes compile the tensor-parallel collectives are traced into the compiled graphs,
where the torch.distributed wrapper above does not see them: their time stays in host/blk. So
the column comparable across eager and compile is f+b/blk (ms_per_block in the JSON): (forward +
backward) / layers, collectives included. Each row also gives torch._dynamo's graph breaks and
unique graphs over the run (graph_breaks, unique_graphs) and the collective calls per block the
wrapper saw (wrapper_collective_calls_per_block: ~0 from the blocks when traced).
`--override training.trace_collectives=false` keeps them outside the graphs (a graph break at
each), the launcher's fallback.

    python benchmarks/diagnostics/bench_host_overhead.py --configs configs/1p3b_lowrank.json \
        --modes eager compile --tensor-parallel 2 --sequence-parallel
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCHMARKS)  # the benchmarks' shared helpers (local_ranks, bench_reference, ...)

PHASES = ("forward", "backward", "optimizer_step", "loop")
MODES = ("eager", "compile")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/1p3b_dense.json", "configs/1p3b_lowrank.json"])
    ap.add_argument("--modes", nargs="+", default=["compile"], choices=list(MODES),
                    help="compile: the blocks compiled, tensor-parallel collectives traced into the graphs")
    ap.add_argument("--steps", type=int, default=40, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--count-steps", type=int, default=20, help="steps counted for syncs (after the timed ones)")
    ap.add_argument("--log-interval", type=int, default=10, help="the shipped configs' value")
    ap.add_argument("--micro-batch-size", type=int, default=2)
    ap.add_argument("--seq-length", type=int, default=16)
    ap.add_argument("--hidden-size", type=int, default=64)
    ap.add_argument("--ffn-hidden-size", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16, help="model.ffn.rank for structured configs")
    ap.add_argument("--override", action="append", default=[], help="extra config override for every case")
    ap.add_argument("--reference", action="store_true", help="also the plain-PyTorch reference's step")
    ap.add_argument("--reference-bf16", action="store_true",
                    help="the reference under bf16 autocast on the CPU too (its GPU precision; default fp32 there, "
                         "as bench_reference.py runs on a CPU)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each case this many times (own process each) and keep the fastest: a shared "
                         "machine's noise only ever adds time")
    ap.add_argument("--tensor-parallel", type=int, default=1,
                    help="T > 1: each case in T gloo processes as tensor T, beside tensor 1 x data T")
    ap.add_argument("--sequence-parallel", action="store_true", help="with --tensor-parallel: also tensor T with SP")
    ap.add_argument("--profile", action="store_true",
                    help="with --tensor-parallel: also a cProfile run of rank 0 per case (top functions)")
    ap.add_argument("--profile-top", type=int, default=40)
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON to --out
    return ap.parse_args(argv)


def tiny_overrides(config: str, args) -> list:
    """The config at tiny widths, layer count and parameter structure kept."""
    from megatron_sffn.config import load_config
    cfg = load_config(config, [])
    out = ["self_guided.enabled=false", "training.eval_iters=1", 'data.tokenizer_model="embedded"',
           f"model.hidden_size={args.hidden_size}", f"model.ffn_hidden_size={args.ffn_hidden_size}",
           f"model.seq_length={args.seq_length}", "model.vocab_size=8192"]
    if cfg.model.ffn.rank is not None:
        out.append(f"model.ffn.rank={args.rank}")
    if cfg.model.kv_heads != cfg.model.num_heads:  # keep the GQA ratio
        out.append(f"model.num_kv_heads={cfg.model.kv_heads}")
    return out + args.override


def launcher_argv(config: str, mode: str, run_dir: str, args, tensor: int = 1, data: int = 1,
                  sequence_parallel: bool = False) -> list:
    total = args.warmup + args.steps + args.count_steps + 1  # the last step ends in the final evaluation
    argv = ["--config", config, "--run-dir", run_dir, "--data-path", "embedded",
            "--micro-batch-size", str(args.micro_batch_size),
            "--global-batch-size", str(args.micro_batch_size * data),  # one micro-batch per step and rank
            "--tensor-parallel", str(tensor),
            "--train-steps", str(total), "--log-interval", str(args.log_interval),
            "--eval-interval", str(10 ** 9), "--no-save"]
    # explicit, not the config's "auto": eager means eager on a GPU too, and no CUDA graphs
    argv += ["--compile" if mode == "compile" else "--no-compile", "--no-cuda-graphs"]
    argv.append("--sequence-parallel" if sequence_parallel else "--no-sequence-parallel")  # explicit, not "auto"
    for o in tiny_overrides(config, args):
        argv += ["--override", o]
    return argv


class PhaseClock:
    """Wall time of wrapped calls, per step, by phase (outermost call only)."""

    def __init__(self):
        self.current = Counter()
        self.depth = 0
        self.phase = None  # the outermost wrapped call running now

    def wrap(self, owner, attr: str, phase: str) -> None:
        original = getattr(owner, attr)
        clock = self

        def timed(*a, **k):
            if clock.depth:
                return original(*a, **k)
            clock.depth += 1
            clock.phase = phase
            started = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                clock.current[phase] += time.perf_counter() - started
                clock.depth -= 1
                clock.phase = None

        setattr(owner, attr, timed)

    def take(self) -> Counter:
        out, self.current = self.current, Counter()
        return out


COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_single", "reduce_scatter_tensor",
               "reduce_scatter_single", "reduce_scatter", "broadcast", "barrier", "all_gather_object")


class _TimedWork:
    """An asynchronous collective's handle whose wait() is timed as collective time."""

    def __init__(self, work, record):
        self._work, self._record = work, record

    def wait(self, *a, **k):
        started = time.perf_counter()
        try:
            return self._work.wait(*a, **k)
        finally:
            self._record(time.perf_counter() - started, wait=True)

    def __getattr__(self, name):
        return getattr(self._work, name)


class CollectiveClock:
    """Time in torch.distributed's collectives (a blocking call's whole time, an asynchronous
    one's launch and wait), per step by the phase it ran in (`clock.phase`), and counts."""

    def __init__(self, clock: PhaseClock):
        self.clock, self.current, self.calls = clock, Counter(), Counter()

    def install(self) -> None:
        import torch.distributed as dist
        for name in COLLECTIVES:
            original = getattr(dist, name, None)
            if original is not None:
                setattr(dist, name, self._timed(original, name))

    def _record(self, seconds: float, name: str = "", wait: bool = False) -> None:
        phase = self.clock.phase or "loop"
        self.current[f"coll_{phase}"] += seconds
        if not wait:
            self.calls[f"{phase}:{name}"] += 1

    def _timed(self, original, name):
        def timed(*a, **k):
            started = time.perf_counter()
            try:
                work = original(*a, **k)
            finally:
                self._record(time.perf_counter() - started, name)
            return _TimedWork(work, self._record) if k.get("async_op") and work is not None else work
        return timed

    def take(self):
        out, self.current = self.current, Counter()
        calls, self.calls = self.calls, Counter()
        return out, calls


def run_megatron_case(config: str, mode: str, args, layout: dict = None) -> dict:
    import torch
    from deepspeed.runtime.engine import DeepSpeedEngine

    from megatron_sffn.config import load_config
    from megatron_sffn.training import loop as loop_module
    from megatron_sffn.training.cli import parse
    from megatron_sffn.training.host_syncs import SyncCounter
    from megatron_sffn.training.master_optimizer import MasterWeightAdamW

    torch.set_num_threads(1)  # a GPU run's host: one thread dispatching
    # Phases by the outermost call, whichever path a step takes (through DeepSpeed's engine
    # or around it): forward = the engine's or the model's call, backward = the engine's
    # backward or Tensor.backward, optimizer step = the engine's step or the optimizer's.
    # Wrapped before the engine captures any bound method.
    clock, inner = PhaseClock(), PhaseClock()
    clock.wrap(DeepSpeedEngine, "__call__", "forward")
    clock.wrap(DeepSpeedEngine, "backward", "backward")
    clock.wrap(torch.Tensor, "backward", "backward")
    clock.wrap(DeepSpeedEngine, "step", "optimizer_step")
    inner.wrap(MasterWeightAdamW, "step", "optimizer")
    clock.wrap(MasterWeightAdamW, "step", "optimizer_step")
    layout = layout or {}
    world = int(os.environ.get("WORLD_SIZE", "1"))
    tensor = layout.get("tensor", 1)
    collectives = CollectiveClock(clock)
    collectives.install()
    run_dir = layout.get("run_dir") or tempfile.mkdtemp(prefix="host_overhead_")
    launcher_args, overrides = parse(launcher_argv(config, mode, run_dir, args, tensor=tensor,
                                                   data=world // tensor,
                                                   sequence_parallel=layout.get("sequence_parallel", False)))
    cfg = load_config(launcher_args.config, overrides, world_size=world)
    trainer = loop_module.Trainer(cfg)
    clock.wrap(type(trainer.engine.module), "__call__", "forward")
    profiler = None
    if layout.get("profile") and trainer.state.rank == 0:
        import cProfile
        profiler = cProfile.Profile()
    steps, counter = [], None
    state = {"start": None}
    count_from, count_to = args.warmup + args.steps, args.warmup + args.steps + args.count_steps
    original = trainer.maybe_drop_guides

    def boundary():  # the first call of each loop iteration: the previous step ended here
        nonlocal counter
        now = time.perf_counter()
        step = trainer.loop.step
        if profiler is not None and step == args.warmup + args.steps:
            profiler.disable()
        if state["start"] is not None:
            spent, calls = collectives.take()
            record = {"step": step - 1, "total": now - state["start"], **clock.take(), **inner.take(), **spent,
                      "collective_calls": calls}
            record["log_step"] = step % args.log_interval == 0
            if counter is not None:
                counter.__exit__(None, None, None)
                record["syncs"], record["ops"] = counter.snapshot(), counter.ops
                counter = None
            steps.append(record)
        if count_from <= step < count_to and profiler is None:
            counter = SyncCounter(count_ops=True)
            counter.__enter__()
        if profiler is not None and step == args.warmup:
            profiler.enable()
        state["start"] = time.perf_counter()
        return original()

    trainer.maybe_drop_guides = boundary
    result = trainer.run()
    timed = [s for s in steps if args.warmup <= s["step"] < args.warmup + args.steps]
    counted = [s for s in steps if "syncs" in s]
    row = summarise(timed, counted)
    row.update({"name": f"{os.path.basename(config).replace('.json', '')}-{mode}", "side": "megatron_sffn",
                "config": os.path.basename(config), "mode": mode, "ffn": cfg.model.ffn.kind,
                "layers": cfg.model.num_layers, "optimizer": cfg.optimizer.implementation,
                "precision": cfg.training.precision, "zero_stage": cfg.parallel.zero_stage,
                "params": trainer.stats.total_params,
                "param_tensors": sum(1 for _ in trainer.engine.module.parameters()),
                "overrides": overrides, "final_loss": result.train_losses.get(result.steps),
                "world_size": world, "tensor": tensor, "data": world // tensor,
                "sequence_parallel": bool(layout.get("sequence_parallel")) and tensor > 1,
                "rank": trainer.state.rank})
    plain = [s for s in timed if not s["log_step"]] or timed
    for phase in PHASES[:-1] + ("loop",):
        row[f"collective_{phase}_ms"] = 1000 * statistics.median(s.get(f"coll_{phase}", 0.0) for s in plain)
    calls = Counter()
    for s in plain:
        calls.update(s["collective_calls"])
    row["collective_calls_per_step"] = {k: v / len(plain) for k, v in sorted(calls.items())}
    layers = cfg.model.num_layers
    host = [s.get("forward", 0.0) + s.get("backward", 0.0) - s.get("coll_forward", 0.0) - s.get("coll_backward", 0.0)
            for s in plain]
    row["fwd_bwd_host_ms"] = 1000 * statistics.median(host)
    row["host_ms_per_block"] = row["fwd_bwd_host_ms"] / layers  # one micro-batch per step
    # collectives included: the same collectives run in every mode, but traced ones (compile) run
    # inside the compiled graphs where the torch.distributed wrapper does not see them, so this,
    # not host_ms_per_block, is the column comparable across eager / compile
    row["fwd_bwd_ms"] = 1000 * statistics.median(s.get("forward", 0.0) + s.get("backward", 0.0) for s in plain)
    row["ms_per_block"] = row["fwd_bwd_ms"] / layers
    row["wrapper_collective_calls_per_block"] = sum(
        v for k, v in row["collective_calls_per_step"].items() if k.startswith(("forward:", "backward:"))) / layers
    row["collectives_in_graphs"] = mode == "compile" and cfg.training.trace_collectives
    row.update(dynamo_counts())
    if profiler is not None:
        row["profile"] = profile_rows(profiler, args.steps, layers, args.profile_top)
        row["profiled"] = True
    return row


def dynamo_counts() -> dict:
    """torch._dynamo's graph breaks (total and by reason) and unique graphs over the whole run."""
    from torch._dynamo.utils import counters
    breaks = counters["graph_break"]
    return {"graph_breaks": sum(breaks.values()), "unique_graphs": counters["stats"].get("unique_graphs", 0),
            "graph_break_reasons": {str(k)[:300]: v for k, v in Counter(breaks).most_common(10)}}


def profile_rows(profiler, steps: int, layers: int, top: int) -> dict:
    """Top functions of a cProfile run by own and cumulative time, per step and per block."""
    import pstats
    stats = pstats.Stats(profiler).stats
    rows = []
    for (path, line, func), (cc, nc, tt, ct, _) in stats.items():
        where = f"{os.path.relpath(path, ROOT) if path.startswith(ROOT) else os.path.basename(path)}:{line}({func})"
        rows.append({"function": where, "calls_per_step": nc / steps, "calls_per_block": nc / steps / layers,
                     "own_ms_per_step": 1000 * tt / steps, "cum_ms_per_step": 1000 * ct / steps})
    total_calls = sum(r["calls_per_step"] for r in rows)
    return {"python_calls_per_step": total_calls, "python_calls_per_block": total_calls / layers,
            "by_own": sorted(rows, key=lambda r: -r["own_ms_per_step"])[:top],
            "by_cumulative": sorted(rows, key=lambda r: -r["cum_ms_per_step"])[:top]}


def summarise(timed, counted) -> dict:
    def median(key, rows):
        values = [r.get(key, 0.0) for r in rows]
        return 1000 * statistics.median(values) if values else None

    plain = [r for r in timed if not r["log_step"]] or timed
    row = {"timed_steps": len(timed), "step_ms": median("total", plain),
           "log_step_ms": median("total", [r for r in timed if r["log_step"]]),
           "mean_step_ms": 1000 * statistics.mean(r["total"] for r in timed)}
    for phase in PHASES[:-1] + ("optimizer",):
        row[f"{phase}_ms"] = median(phase, plain)
    row["loop_ms"] = 1000 * statistics.median(r["total"] - sum(r.get(p, 0.0) for p in PHASES[:-1]) for r in plain)

    def syncs(rows):
        if not rows:
            return None, {}
        totals = Counter()
        for r in rows:
            totals.update(r["syncs"])
        return sum(totals.values()) / len(rows), {k: v / len(rows) for k, v in sorted(totals.items())}

    non_log = [r for r in counted if not r["log_step"]]
    log = [r for r in counted if r["log_step"]]
    row["syncs_per_step"], row["sync_kinds_per_step"] = syncs(non_log)
    row["syncs_per_log_step"], row["sync_kinds_per_log_step"] = syncs(log)
    row["aten_ops_per_step"] = statistics.mean(r["ops"] for r in non_log) if non_log else None
    row["counted_steps"] = {"non_log": len(non_log), "log": len(log)}
    return row


def run_reference_case(config: str, mode: str, args) -> dict:
    """bench_reference.py's step, split into the same phases (fp32 on the CPU, as there)."""
    import torch

    import bench_reference as ref
    from megatron_sffn.config import load_config
    from megatron_sffn.model.accounting import model_stats
    from megatron_sffn.training.host_syncs import SyncCounter

    torch.set_num_threads(1)
    cfg = load_config(config, tiny_overrides(config, args) + [
        f"training.micro_batch_size={args.micro_batch_size}", f"training.global_batch_size={args.micro_batch_size}"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" or args.reference_bf16 else None
    model, opt, step_fn = ref.build(cfg, device, mode == "compile")
    # torch's fused AdamW, as the reference runs on a GPU (its CPU fallback, foreach with CPU step
    # counters, reads every counter with .item(): 2 syncs per tensor a GPU run does not make)
    o = cfg.optimizer
    groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
    data = ref.TokenWindows("embedded", cfg.model.seq_length, cfg.training.seed)
    records = []
    total_steps = args.warmup + args.steps + args.count_steps
    for step in range(total_steps):
        counter = SyncCounter(count_ops=True) if step >= args.warmup + args.steps else None
        if counter is not None:
            counter.__enter__()
        r = {"step": step, "log_step": False}
        t0 = time.perf_counter()
        for group in opt.param_groups:  # as bench_reference.run_case
            group["lr"] = cfg.optimizer.lr
        x, y = data.batch(args.micro_batch_size, device)
        t1 = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = step_fn(x, y)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        if cfg.optimizer.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optimizer.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        float(loss.detach())  # the reference reads its loss every step
        t5 = time.perf_counter()
        r.update(total=t5 - t0, forward=t2 - t1, backward=t3 - t2, optimizer_step=t4 - t3, optimizer=t4 - t3)
        if counter is not None:
            counter.__exit__(None, None, None)
            r["syncs"], r["ops"] = counter.snapshot(), counter.ops
        records.append(r)
    timed = [r for r in records if args.warmup <= r["step"] < args.warmup + args.steps]
    row = summarise(timed, [r for r in records if "syncs" in r])
    suffix = "-bf16" if dtype is not None and device.type == "cpu" else ""
    row.update({"name": f"reference-{os.path.basename(config).replace('.json', '')}-{mode}{suffix}", "side": "reference",
                "config": os.path.basename(config), "mode": mode, "ffn": cfg.model.ffn.kind,
                "layers": cfg.model.num_layers, "optimizer": "torch AdamW, fused",
                "precision": "fp32" if dtype is None else "bf16 autocast", "params": model_stats(cfg.model).total_params,
                "param_tensors": sum(1 for _ in model.parameters())})
    return row


def run_in_subprocess(case: dict, args) -> dict:
    if case.get("world", 1) > 1:
        return run_ranks_in_subprocesses(case, args)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case.json")
        cmd = case_command(case, out, args)
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{case}: FAILED (exit {proc.returncode})\n{(proc.stdout + proc.stderr)[-3000:]}", file=sys.stderr)
            return {"name": case_name(case), "error": proc.returncode}
        with open(out) as f:
            return json.load(f)


def case_name(case: dict) -> str:
    name = f"{case['side']}-{case['config']}-{case['mode']}"
    if case.get("world", 1) > 1:
        name = f"{os.path.basename(case['config']).replace('.json', '')}-{case['mode']}-" + layout_name(case)
    return name + ("-profiled" if case.get("profile") else "")


def layout_name(case: dict) -> str:
    t, w = case.get("tensor", 1), case.get("world", 1)
    return f"t{t}d{w // t}" + ("sp" if case.get("sequence_parallel") and t > 1 else "")


def run_ranks_in_subprocesses(case: dict, args) -> dict:
    """One case on case['world'] local processes over gloo, started as torchrun would; rank 0's row."""
    from megatron_sffn.parallel.launch import free_port
    world, port = case["world"], free_port()
    with tempfile.TemporaryDirectory() as tmp:
        case = dict(case, run_dir=os.path.join(tmp, "run"))
        outs = [os.path.join(tmp, f"rank{r}.json") for r in range(world)]
        logs = [open(os.path.join(tmp, f"rank{r}.log"), "w+") for r in range(world)]
        procs = []
        for r in range(world):
            env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       CUDA_VISIBLE_DEVICES="")
            procs.append(subprocess.Popen(case_command(case, outs[r], args), cwd=ROOT, env=env, stdout=logs[r],
                                          stderr=subprocess.STDOUT))
        codes = [p.wait() for p in procs]
        if any(codes):
            for r, log in enumerate(logs):
                log.seek(0)
                print(f"{case_name(case)} rank {r}: exit {codes[r]}\n{log.read()[-3000:]}", file=sys.stderr)
            return {"name": case_name(case), "error": max(codes)}
        rows = []
        for out in outs:
            with open(out) as f:
                rows.append(json.load(f))
        row = rows[0]
        row["name"] = case_name(case)
        row["other_ranks"] = [{k: r.get(k) for k in ("rank", "step_ms", "forward_ms", "backward_ms",
                                                    "optimizer_step_ms", "collective_forward_ms",
                                                    "collective_backward_ms", "host_ms_per_block", "ms_per_block")}
                              for r in rows[1:]]
        return row


def case_command(case: dict, out: str, args) -> list:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", json.dumps(case), "--out", out,
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--count-steps", str(args.count_steps),
           "--log-interval", str(args.log_interval), "--micro-batch-size", str(args.micro_batch_size),
           "--seq-length", str(args.seq_length), "--hidden-size", str(args.hidden_size),
           "--ffn-hidden-size", str(args.ffn_hidden_size), "--rank", str(args.rank)]
    if args.reference_bf16:
        cmd.append("--reference-bf16")
    for o in args.override:
        cmd += ["--override", o]
    cmd += ["--profile-top", str(args.profile_top)]
    return cmd


def environment() -> dict:
    import platform

    import deepspeed
    import torch
    return {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "deepspeed": deepspeed.__version__,
            "python": sys.version.split()[0], "machine": platform.machine(), "cpu_threads": 1,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}


def fmt(value, spec=".2f"):
    return "-" if value is None else format(value, spec)


def print_table(rows) -> None:
    header = (f"{'case':<34} {'step ms':>8} {'fwd':>7} {'bwd':>7} {'opt step':>8} {'(optim)':>8} {'loop':>7} "
              f"{'log step':>8} {'syncs/step':>10} {'syncs/log':>9} {'ops/step':>8}")
    print("\n" + header + "\n" + "-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<34} failed (exit {r['error']})")
            continue
        print(f"{r['name']:<34} {fmt(r['step_ms']):>8} {fmt(r['forward_ms']):>7} {fmt(r['backward_ms']):>7} "
              f"{fmt(r['optimizer_step_ms']):>8} {fmt(r['optimizer_ms']):>8} {fmt(r['loop_ms']):>7} "
              f"{fmt(r['log_step_ms']):>8} {fmt(r['syncs_per_step'], '.1f'):>10} "
              f"{fmt(r['syncs_per_log_step'], '.1f'):>9} {fmt(r['aten_ops_per_step'], '.0f'):>8}")
    for r in rows:
        if "error" not in r and r.get("sync_kinds_per_step"):
            kinds = ", ".join(f"{k} {v:g}" for k, v in r["sync_kinds_per_step"].items())
            print(f"  {r['name']}: syncs per non-logging step: {kinds}")


def tensor_parallel_cases(args) -> list:
    t = args.tensor_parallel
    layouts = [dict(tensor=1), dict(tensor=t)] + ([dict(tensor=t, sequence_parallel=True)]
                                                   if args.sequence_parallel else [])
    cases = []
    for c in args.configs:
        for m in args.modes:
            base = {"side": "megatron_sffn", "config": c, "mode": m, "world": t}
            cases += [dict(base, **layout) for layout in layouts]
            if args.profile:
                cases += [dict(base, profile=True, **layout) for layout in layouts]
    return cases


def print_tensor_parallel_table(rows) -> None:
    """Host ms per block per micro-batch, collectives taken out, against tensor 1 of the same config."""
    timed = [r for r in rows if "error" not in r and not r.get("profiled")]
    header = (f"{'case':<36} {'fwd':>7} {'bwd':>7} {'opt':>7} {'coll fwd':>8} {'coll bwd':>8} {'coll opt':>8} "
              f"{'host/blk':>8} {'vs t1':>7} {'coll calls':>10} {'f+b/blk':>8} {'calls/blk':>9} {'breaks':>6} "
              f"{'graphs':>6}")
    print("\nper step (one micro-batch), ms; host/blk = (fwd + bwd - the collectives the torch.distributed wrapper "
          "saw) / layers;\nf+b/blk = (fwd + bwd) / layers, collectives included: the column comparable across "
          "eager / compile\n(traced collectives run inside the compiled graphs, unseen by the "
          "wrapper: calls/blk = the wrapper's fwd + bwd calls per block;\nbreaks, graphs = torch._dynamo's "
          "graph breaks and unique graphs over the run)\n" + header)
    print("-" * len(header))
    for r in timed:
        base = next((b for b in timed if b["config"] == r["config"] and b["mode"] == r["mode"] and b["tensor"] == 1),
                    None)
        excess = r["host_ms_per_block"] - base["host_ms_per_block"] if base else None
        calls = sum(v for k, v in r["collective_calls_per_step"].items() if not k.startswith("loop"))
        print(f"{r['name']:<36} {fmt(r['forward_ms']):>7} {fmt(r['backward_ms']):>7} {fmt(r['optimizer_step_ms']):>7} "
              f"{fmt(r['collective_forward_ms']):>8} {fmt(r['collective_backward_ms']):>8} "
              f"{fmt(r['collective_optimizer_step_ms']):>8} {fmt(r['host_ms_per_block'], '.3f'):>8} "
              f"{fmt(excess, '+.3f'):>7} {calls:>10.0f} {fmt(r.get('ms_per_block'), '.3f'):>8} "
              f"{fmt(r.get('wrapper_collective_calls_per_block'), '.2f'):>9} {r.get('graph_breaks', 0):>6} "
              f"{r.get('unique_graphs', 0):>6}")
    for r in rows:
        if r.get("profiled") and "error" not in r:
            p = r["profile"]
            print(f"\n{r['name']} (cProfile, rank 0, per step; {p['python_calls_per_block']:.0f} Python calls per block)")
            print(f"  {'own ms':>7} {'cum ms':>7} {'calls/blk':>9}  function (by own time)")
            for f in p["by_own"][:20]:
                print(f"  {f['own_ms_per_step']:7.2f} {f['cum_ms_per_step']:7.2f} {f['calls_per_block']:9.2f}  {f['function']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:
        case = json.loads(args.case)
        if case["side"] == "reference":
            row = run_reference_case(case["config"], case["mode"], args)
        else:
            row = run_megatron_case(case["config"], case["mode"], args, layout=case)
        with open(args.out, "w") as f:
            json.dump(row, f)
        from local_ranks import leave_and_exit  # a rank's teardown may abort (-6) after its row is out
        leave_and_exit(0)
    if args.tensor_parallel > 1:
        cases = tensor_parallel_cases(args)
    else:
        cases = [{"side": side, "config": c, "mode": m} for c in args.configs for m in args.modes
                 for side in (["megatron_sffn", "reference"] if args.reference else ["megatron_sffn"])]
    rows = []
    for case in cases:
        if case.get("profile"):  # one run: its times are the profiler's, not the timed ones
            rows.append(run_in_subprocess(case, args))
            print(f"done: {rows[-1].get('name')}", file=sys.stderr, flush=True)
            continue
        runs = [run_in_subprocess(case, args) for _ in range(max(1, args.repeat))]
        good = [r for r in runs if "error" not in r]
        row = min(good, key=lambda r: r["step_ms"]) if good else runs[0]
        if good:
            row["repeats_step_ms"] = [r["step_ms"] for r in good]
        rows.append(row)
        print(f"done: {rows[-1].get('name')}", file=sys.stderr, flush=True)
    print_table([r for r in rows if not r.get("profiled")])
    if args.tensor_parallel > 1:
        print_tensor_parallel_table(rows)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"environment": environment(), "args": {k: v for k, v in vars(args).items() if k != "case"},
                       "results": rows}, f, indent=2)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
