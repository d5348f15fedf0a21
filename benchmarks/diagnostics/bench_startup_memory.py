#!/usr/bin/env python
"""Start-up memory on CPU: live tensor bytes over a run's start-up and first steps, by phase.

The GPU figure this stands in for is torch.cuda.max_memory_allocated over the whole process
(issue 15: the default path's run-wide peak, start-up included, against the plain-PyTorch
reference's). On CPU the same quantity is the CPU allocator's live bytes: with
torch.profiler's memory profiling on, c10's CPU allocator reports every allocation and free
with the running total of bytes allocated (`total_allocated`), which is what
memory_allocated counts on CUDA (without the caching allocator's 512-byte rounding). The
whole case runs under the profiler from before the model exists, so every live byte is
counted; phase markers (record_function) split the timeline:

  megatron_sffn   the real start-up, through training/loop.py's Trainer (distributed state,
                  data, TrainEngine.build: model build, seeded initialisation, the fused
                  optimizer's buffers, deepspeed.initialize), then `--steps` Trainer.train_step
                  calls split into forward / backward / optimizer step
  reference       benchmarks/reference_model.py built on the device in fp32 and initialised,
                  torch's fused AdamW, then `--steps` steps (bf16 autocast, clip, step) as
                  bench_reference.py does them on a GPU

For each phase: the peak of live bytes, and at the run-wide peak which phases allocated the
bytes then live (bytes per parameter). Long-lived holdings (weights, fp32 masters, main
gradients, Adam moments) are read from the objects after start-up and after the last step.

A 1.3B step on 2 CPU cores takes minutes, so `--layers` runs the config at reduced depth
(several depths, each its own process) and every phase's peak is extrapolated linearly to the
config's own depth (the bytes of a phase are affine in the number of blocks; layer 0 is the
dense-FFN block in every depth, so depths >= 2 share the same intercept). Compiled blocks are
optional (`--compile`): Inductor's CPU code allocates through the same allocator.

    python benchmarks/diagnostics/bench_startup_memory.py --configs configs/1p3b_lowrank.json configs/1p3b_dense.json \\
        --layers 2 3 --out benchmarks/results/startup_memory.json
    python benchmarks/diagnostics/bench_startup_memory.py --smoke --out /tmp/startup.json      # tiny model, seconds
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCHMARKS)  # the benchmarks' shared helpers (local_ranks, bench_reference, ...)

SMOKE = ["model.hidden_size=64", "model.num_layers=3", "model.num_heads=4", "model.ffn_hidden_size=256",
         "model.seq_length=32", "self_guided.enabled=false", "training.precision=bf16"]
STARTUP = "start-up: other"


# -- the accounting ---------------------------------------------------------------------------
class LiveBytes:
    """Phases over one profiled stretch of a process; `report()` after the stretch ends.

    enter(label) / leave() keep a stack of labels; every switch drops a marker into the
    profile, so each allocation event belongs to the label on top of the stack when it happened."""

    def __init__(self):
        self._stack = []
        self._prof = None
        self.notes = {}  # name -> {category: bytes}: holdings read from objects at named moments

    def start(self) -> "LiveBytes":
        from torch.profiler import ProfilerActivity, profile
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._stopped = False
        self._prof.__enter__()
        self.enter(STARTUP)
        return self

    def stop(self) -> None:
        """End the profiled stretch (call it while the run's objects are still alive)."""
        if not self._stopped:
            self._prof.__exit__(None, None, None)
            self._stopped = True

    def _mark(self) -> None:
        from torch.profiler import record_function
        with record_function("phase::" + (self._stack[-1] if self._stack else "")):
            pass

    def enter(self, label: str) -> None:
        self._stack.append(label)
        self._mark()

    def leave(self) -> None:
        self._stack.pop()
        self._mark()

    def switch(self, label: str) -> None:
        """Replace the innermost label."""
        self._stack[-1] = label
        self._mark()

    @contextlib.contextmanager
    def phase(self, label: str):
        self.enter(label)
        try:
            yield
        finally:
            self.leave()

    def wrap(self, owner, attr: str, label) -> None:
        """Run owner.attr under phase `label` (a string, or a function of the call's arguments)."""
        original = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            with self.phase(label(*args, **kwargs) if callable(label) else label):
                return original(*args, **kwargs)

        wrapped.__wrapped__ = original
        setattr(owner, attr, wrapped)

    # -- reading the profile ----------------------------------------------------------------
    def events(self):
        """[(time ns, kind, value)] in time order: ('mark', label) or ('alloc', (bytes, total, ptr, op))."""
        tree = self._prof.profiler.kineto_results.experimental_event_tree()
        out, todo = [], list(tree)
        while todo:
            node = todo.pop()
            todo.extend(node.children)
            fields = node.extra_fields
            if type(fields).__name__ == "_ExtraFields_Allocation":
                if fields.alloc_size:
                    op = node.parent.name if node.parent is not None else ""
                    out.append((node.start_time_ns, 1, "alloc", (fields.alloc_size, fields.total_allocated, fields.ptr, op)))
            elif node.name.startswith("phase::"):
                out.append((node.start_time_ns, 0, "mark", node.name[len("phase::"):]))
        out.sort(key=lambda e: (e[0], e[1]))
        return [(t, kind, value) for t, _, kind, value in out]

    def report(self, params: int) -> dict:
        """Per phase (in order of first appearance): peak live bytes; the run-wide peak with the
        live bytes at that moment grouped by the phase that allocated them."""
        events = self.events()
        # the allocator's running total is process-wide (an earlier profile may have left blocks
        # counted): count from what was live when this stretch began
        first = next((value for _, kind, value in events if kind == "alloc"), None)
        base = first[1] - first[0] if first else 0
        events = [(t, kind, (v[0], v[1] - base, v[2], v[3]) if kind == "alloc" else v) for t, kind, v in events]
        phases, order = {}, []
        label, live = STARTUP, 0
        peak = (-1, None, -1)  # (bytes, phase, index)
        for i, (_, kind, value) in enumerate(events):
            if kind == "mark":
                label = value
                if label not in phases:
                    phases[label] = {"phase": label, "peak_bytes": live, "start_bytes": live}
                    order.append(label)
                phases[label]["end_bytes"] = live
                continue
            live = value[1]
            entry = phases.setdefault(label, {"phase": label, "peak_bytes": live, "start_bytes": live})
            entry["peak_bytes"] = max(entry["peak_bytes"], live)
            entry["end_bytes"] = live
            if live > peak[0]:
                peak = (live, label, i)
        # replay to the peak: which phase allocated each live block, and the largest blocks
        blocks, label = {}, STARTUP
        for _, kind, value in events[:peak[2] + 1]:
            if kind == "mark":
                label = value
                continue
            size, _, ptr, op = value
            if size > 0:
                blocks[ptr] = (size, label, op)
            else:
                blocks.pop(ptr, None)
        by_phase = {}
        for size, origin, _ in blocks.values():
            by_phase[origin] = by_phase.get(origin, 0) + size
        largest = sorted(blocks.values(), reverse=True)[:8]
        return {
            "params": params,
            "phases": [phases[name] for name in order if name in phases],
            "peak_bytes": peak[0], "peak_phase": peak[1],
            "live_at_peak_by_allocating_phase": dict(sorted(by_phase.items(), key=lambda kv: -kv[1])),
            "largest_live_at_peak": [{"bytes": s, "allocated_in": p, "op": op} for s, p, op in largest],
            "holdings": self.notes,
        }


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and aliases counted once)."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen and storage.nbytes():
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def megatron_holdings(engine) -> dict:
    """Long-lived bytes of the engine by category (distinct storages; shared ones counted once, first)."""
    import torch
    module, opt = engine.module, engine.ds.optimizer
    groups = {}
    params = list(module.parameters())
    for dtype in sorted({p.dtype for p in params}, key=str):
        groups[f"weights ({str(dtype).replace('torch.', '')})"] = [p for p in params if p.dtype == dtype]
    groups["buffers"] = list(module.buffers())
    groups["gradients (.grad)"] = [p.grad for p in params]
    for attr, name in (("_main_flat", "main gradients (fp32)"), ("_shard_grad", "shard gradients (fp32)"),
                       ("_low_flat", "weights (bf16 flat)")):
        if isinstance(getattr(opt, attr, None), torch.Tensor):
            groups[name] = [getattr(opt, attr)]
    buckets = [b.main for b in getattr(opt, "_buckets", []) if isinstance(getattr(b, "main", None), torch.Tensor)]
    groups.setdefault("main gradients (fp32)", []).extend(buckets)  # per-bucket buffers (held during a step)
    masters = [m for group in getattr(opt, "fp32_groups", []) for m in group]
    groups["fp32 masters"] = masters
    inner = getattr(opt, "optimizer", opt)
    groups["Adam moments"] = [v for s in getattr(inner, "state", {}).values() for k, v in s.items()
                              if isinstance(v, torch.Tensor) and k != "step"]
    return _distinct(groups)


def reference_holdings(model, opt) -> dict:
    import torch
    params = list(model.parameters())
    groups = {"weights (fp32)": params, "gradients (.grad)": [p.grad for p in params],
              "Adam moments": [v for s in opt.state.values() for k, v in s.items()
                               if isinstance(v, torch.Tensor) and k != "step"]}
    return _distinct(groups)


def _distinct(groups) -> dict:
    seen, out = set(), {}
    for name, tensors in groups.items():
        total = 0
        for t in tensors:
            if t is None:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() in seen or not storage.nbytes():
                continue
            seen.add(storage.data_ptr())
            total += storage.nbytes()
        if total:
            out[name] = total
    return out


# -- the two start-ups ------------------------------------------------------------------------
def megatron_case(cfg, steps: int, acct: LiveBytes) -> int:
    """The launcher's own start-up (Trainer) and `steps` training steps; returns the parameter count."""
    import deepspeed

    from megatron_sffn.model import gpt
    from megatron_sffn.training import engine as engine_mod
    from megatron_sffn.training import loop
    from megatron_sffn.training.master_optimizer import MasterWeightAdamW

    acct.wrap(engine_mod, "build_data_parallel_module", "model build")
    acct.wrap(engine_mod, "build_pipeline_module", "model build")
    acct.wrap(gpt.GPTModel, "initialize", "seeded initialisation")
    acct.wrap(engine_mod.TrainEngine, "_master_weight_optimizer", "optimizer construction")
    acct.wrap(engine_mod, "build_optimizer", "optimizer construction")
    acct.wrap(deepspeed, "initialize", "deepspeed.initialize")
    acct.wrap(loop, "DataFeed", "data (sample indices)")
    trainer = loop.Trainer(cfg)
    engine = trainer.engine
    acct.notes["after start-up"] = megatron_holdings(engine)
    counter = {"step": 0}
    # a micro-batch: the module's forward, then backward (whoever calls it) until the optimizer step
    after(acct, engine.ds.module, "forward", lambda: f"step {counter['step']}: forward",
          lambda: f"step {counter['step']}: backward")
    after(acct, engine.ds.optimizer, "step", lambda: f"step {counter['step']}: optimizer",
          lambda: f"step {counter['step']}: other")
    for step in range(1, steps + 1):
        counter["step"] = step
        with acct.phase(f"step {step}: other"):
            trainer.train_step()
    acct.notes[f"after step {steps}"] = megatron_holdings(engine)
    acct.stop()
    assert isinstance(engine.ds.optimizer, MasterWeightAdamW) or cfg.optimizer.implementation != "fused"
    return sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())


def after(acct: LiveBytes, owner, attr: str, during, then) -> None:
    """owner.attr runs under phase during(); what follows it, until the next marker, under then()."""
    original = getattr(owner, attr)

    def wrapped(*args, **kwargs):
        acct.enter(during())
        try:
            return original(*args, **kwargs)
        finally:
            acct.leave()
            acct.switch(then())

    setattr(owner, attr, wrapped)


def reference_case(cfg, steps: int, acct: LiveBytes, micro_batch: int, data_path: str, compiled: bool) -> int:
    """bench_reference.py's model, optimizer and step as they run on a GPU: fp32 parameters
    under bf16 autocast, torch's fused AdamW, clipping (the CPU device instead of CUDA)."""
    import torch

    from bench_reference import TokenWindows
    from reference_model import ReferenceGPT
    device = torch.device("cpu")
    with acct.phase("model build + initialisation"):
        torch.manual_seed(cfg.training.seed)
        with torch.device(device):
            model = ReferenceGPT(cfg.model).initialize()
    with acct.phase("optimizer construction"):
        o = cfg.optimizer
        decay = [p for p in model.parameters() if p.dim() >= 2]
        other = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": other, "weight_decay": 0.0}],
                                lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, fused=True)
        step_fn = torch.compile(model) if compiled else model
        data = TokenWindows(data_path, cfg.model.seq_length, cfg.training.seed)
    acct.notes["after start-up"] = reference_holdings(model, opt)
    for step in range(1, steps + 1):
        with acct.phase(f"step {step}: forward"):
            x, y = data.batch(micro_batch, device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = step_fn(x, y)
        with acct.phase(f"step {step}: backward"):
            loss.backward()
            del loss
        with acct.phase(f"step {step}: optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
    acct.notes[f"after step {steps}"] = reference_holdings(model, opt)
    acct.stop()
    return sum(p.numel() for p in model.parameters())


def case_config(config: str, layers, args):
    from megatron_sffn.config import load_config
    from megatron_sffn.training.cli import parse
    run_dir = os.path.join(args.work_dir, "run")
    argv = ["--config", config, "--run-dir", run_dir, "--data-path", args.data_path, "--no-save",
            "--micro-batch-size", str(args.micro_batch_size), "--global-batch-size", str(args.micro_batch_size),
            "--train-steps", "1000", "--eval-interval", str(10 ** 9)]
    # explicit, not the config's "auto" (on a GPU that would compile both sides)
    argv += ["--compile" if args.compile else "--no-compile", "--override", "training.cuda_graphs=false"]
    for o in case_overrides(args, layers):
        argv += ["--override", o]
    _, overrides = parse(argv)
    return load_config(config, overrides, world_size=1)


def case_overrides(args, layers) -> list:
    out = ["self_guided.enabled=false", "output.tensorboard=false"]
    if args.data_path == "embedded":
        out.append('data.tokenizer_model="embedded"')
    out += (SMOKE if args.smoke else []) + list(args.override)
    if layers is not None:
        out.append(f"model.num_layers={layers}")
    return out


def run_case(side: str, config: str, layers, args) -> dict:
    import torch
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    cfg = case_config(config, layers, args)
    acct = LiveBytes().start()
    started = time.perf_counter()
    if side == "megatron_sffn":
        params = megatron_case(cfg, args.steps, acct)
    else:
        params = reference_case(cfg, args.steps, acct, args.micro_batch_size, args.data_path, args.compile)
    seconds = time.perf_counter() - started
    acct.stop()
    report = acct.report(params)
    report.update(side=side, config=os.path.basename(config), num_layers=cfg.model.num_layers,
                  micro_batch=args.micro_batch_size, seq_length=cfg.model.seq_length,
                  precision=cfg.training.precision, optimizer=cfg.optimizer.implementation if side != "reference"
                  else "torch AdamW fused", zero_stage=cfg.parallel.zero_stage, compiled=bool(args.compile),
                  seconds=seconds)
    report.update(summarise(report, args.steps))
    return report


def summarise(report: dict, steps: int) -> dict:
    """Run-wide, start-up (everything before step 1), first-step and last-step peaks."""
    def peak(prefix):
        values = [p["peak_bytes"] for p in report["phases"] if prefix(p["phase"])]
        return max(values) if values else 0
    return {"startup_peak_bytes": peak(lambda name: not name.startswith("step ")),
            "first_step_peak_bytes": peak(lambda name: name.startswith("step 1:")),
            "steady_step_peak_bytes": peak(lambda name: name.startswith(f"step {steps}:"))}


# -- the driver ---------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", default=["configs/1p3b_lowrank.json", "configs/1p3b_dense.json"])
    ap.add_argument("--sides", nargs="+", default=["megatron_sffn", "reference"], choices=["megatron_sffn", "reference"])
    ap.add_argument("--layers", type=int, nargs="+", default=None,
                    help="run at these depths (>= 2) and extrapolate each phase to the config's depth")
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--data-path", default="embedded")
    ap.add_argument("--override", action="append", default=[])
    ap.add_argument("--compile", action="store_true", help="--compile on both sides (Inductor on CPU: slow)")
    ap.add_argument("--smoke", action="store_true", help="a tiny bf16 model (seconds)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_in_subprocess(side: str, config: str, layers, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "case.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--in-process", "--sides", side, "--configs", config,
               "--micro-batch-size", str(args.micro_batch_size), "--steps", str(args.steps),
               "--data-path", args.data_path, "--out", out, "--work-dir", tmp]
        cmd += ["--layers", str(layers)] if layers is not None else []
        cmd += ["--compile"] if args.compile else []
        cmd += ["--smoke"] if args.smoke else []
        for o in args.override:
            cmd += ["--override", o]
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{side} {config} layers={layers}: exit {proc.returncode}\n"
                               f"{(proc.stdout + proc.stderr)[-4000:]}")
        with open(out) as f:
            return json.load(f)["results"][0]


def extrapolate(rows: list, depth: int) -> dict:
    """Each phase's peak (and the summary peaks) as a + b * layers through the two deepest runs."""
    rows = sorted(rows, key=lambda r: r["num_layers"])
    lo, hi = rows[-2], rows[-1]
    span = hi["num_layers"] - lo["num_layers"]

    def line(a, b):
        return int(round(b + (b - a) * (depth - hi["num_layers"]) / span))

    lo_phases = {p["phase"]: p["peak_bytes"] for p in lo["phases"]}
    phases = [{"phase": p["phase"], "peak_bytes": line(lo_phases[p["phase"]], p["peak_bytes"])}
              for p in hi["phases"] if p["phase"] in lo_phases]
    out = {"num_layers": depth, "from_layers": [lo["num_layers"], hi["num_layers"]], "phases": phases,
           "params": line(lo["params"], hi["params"])}
    for key in ("startup_peak_bytes", "first_step_peak_bytes", "steady_step_peak_bytes"):
        out[key] = line(lo[key], hi[key])
    top = max(phases, key=lambda p: p["peak_bytes"])
    out["peak_bytes"], out["peak_phase"] = top["peak_bytes"], top["phase"]
    return out


def gb(n) -> str:
    return f"{n / 1e9:8.3f}"


def print_table(results: list, extrapolated: list) -> None:
    for r in results:
        print(f"\n{r['side']} {r['config']} layers={r['num_layers']} micro-batch {r['micro_batch']} x "
              f"{r['seq_length']} ({r['params'] / 1e6:.1f}M params, {r['seconds']:.0f} s)")
        print(f"  {'phase':<34} {'peak GB':>8} {'end GB':>8} {'B/param':>8}")
        for p in r["phases"]:
            print(f"  {p['phase']:<34} {gb(p['peak_bytes'])} {gb(p.get('end_bytes', 0))} "
                  f"{p['peak_bytes'] / r['params']:8.2f}")
        print(f"  run-wide peak {gb(r['peak_bytes'])} GB in '{r['peak_phase']}'; live then, by allocating phase (B/param): "
              + ", ".join(f"{k} {v / r['params']:.2f}" for k, v in r["live_at_peak_by_allocating_phase"].items()))
        for moment, held in r["holdings"].items():
            print(f"  held {moment} (B/param): " + ", ".join(f"{k} {v / r['params']:.2f}" for k, v in held.items()))
    if extrapolated:
        print(f"\n{'extrapolated to the config depth':<40} {'layers':>6} {'start-up':>9} {'step 1':>9} "
              f"{'step N':>9} {'run peak':>9}  phase of the run peak")
        for e in extrapolated:
            print(f"{e['side'] + ' ' + e['config']:<40} {e['num_layers']:>6} {gb(e['startup_peak_bytes'])} "
                  f"{gb(e['first_step_peak_bytes'])} {gb(e['steady_step_peak_bytes'])} {gb(e['peak_bytes'])}  "
                  f"{e['peak_phase']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.in_process:
        layers = args.layers[0] if args.layers else None
        row = run_case(args.sides[0], args.configs[0], layers, args)
        with open(args.out, "w") as f:
            json.dump({"results": [row]}, f, indent=2)
        return 0
    if args.smoke:
        args.configs = args.configs if argv and "--configs" in argv else ["configs/tiny_demo.json"]
        args.micro_batch_size = 4 if "--micro-batch-size" not in (argv or sys.argv) else args.micro_batch_size
    results, extrapolated = [], []
    for config in args.configs:
        for side in args.sides:
            rows = [run_in_subprocess(side, config, layers, args) for layers in (args.layers or [None])]
            results += rows
            if args.layers and len(args.layers) >= 2:
                from megatron_sffn.config import load_config
                depth = load_config(config, []).model.num_layers
                extrapolated.append({"side": side, "config": os.path.basename(config), **extrapolate(rows, depth)})
            if args.out:
                write_json(args, results, extrapolated)
    print_table(results, extrapolated)
    return 0


def write_json(args, results, extrapolated) -> None:
    import torch
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "python": sys.version.split()[0],
           "device": "cpu", "threads": torch.get_num_threads(),
           "measure": "CPU allocator live bytes (torch.profiler profile_memory total_allocated)"}
    with open(args.out, "w") as f:
        json.dump({"environment": env, "args": {k: v for k, v in vars(args).items() if k != "work_dir"},
                   "results": results, "extrapolated": extrapolated}, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
