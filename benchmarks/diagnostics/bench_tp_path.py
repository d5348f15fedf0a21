#!/usr/bin/env python
"""Host cost of the tensor-parallel code path: on one device (a tensor group of one rank), or
on N devices as real tensor parallelism (--tensor-parallel N), without DeepSpeed or data.

On 4 H200 the tensor-parallel layouts ran at 12-31% of data parallelism with the GPUs mostly
waiting: each rank's host needed ~5 ms per block and micro-batch to issue its work. This
separates that host cost from everything a multi-GPU run adds (rank skew, the link): the
model runs its tensor-parallel path (every region edge, every collective, sequence
parallelism's gathers and reduce-scatters) on a tensor group of ONE rank, so the math is the
plain model's and each collective is a real but trivial call (NCCL on a GPU, gloo on a CPU).

Modes (each in its own process, forward + backward of one micro-batch per step, bf16
parameters on a GPU, fp32 on a CPU; no optimizer):
  plain-eager, plain-compiled  the model without the tensor-parallel path (tensor size 1)
  tp-eager                     the tensor-parallel path, eager
  tp-split                     compiled, the collectives outside the graphs (a graph break at
                               each: the behaviour before parallel/collectives.py)
  tp-traced                    compiled, the collectives traced into the graphs
  tp-eager-nocomm,             as tp-eager / tp-traced with every collective of the one-rank group
  tp-traced-nocomm             replaced by the identity: what the path costs without its calls
--tensor-parallel N: N processes (one GPU each, NCCL; gloo on a CPU), the tp- modes as tensor
N with the real shards and collectives, the plain- modes as N independent copies of the plain
model (each device's own full model: the per-GPU baseline).
--emulate N: one process, the tp- modes as rank 0 of a tensor group of N on torch's fake
process group (that rank's real shards and activations, collectives that move nothing, each
traced collective one kernel as in tools/emulate_rank.py: the rank's own host and device
work), the plain- modes as the full model a data-parallel rank runs.
--keep-collective-autograd leaves torch's Python autograd kernels on the functional
collectives the compiled blocks call (what compile_blocks bypasses: parallel/collectives.py). Each mode runs under
--case-timeout seconds; a mode that hangs is reported as such, with every rank's Python stacks
dumped shortly before the timeout (where each waits), and the others still run.

Reported per mode (rank 0): ms per step (timed window, the device synchronised at its end only),
host ms per step (until backward() returns: when it nears the step time the host is the
bound), graph breaks and graphs Dynamo made, the loss of the first step (equal across
modes: the path of size 1 computes the plain model), and the drift: the largest difference
from it of the timed steps that see the first step's batch again (no optimizer, so the same
loss; under CUDA graphs these are replays, where a collective racing the kernels beside it
would show). Prints a table and writes JSON.

    python benchmarks/diagnostics/bench_tp_path.py --config configs/1p3b_lowrank.json --micro-batch-size 8 \\
        --out tp_path.json
    python benchmarks/diagnostics/bench_tp_path.py --tensor-parallel 2 --modes plain-compiled tp-traced --micro-batch-size 8
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time

BENCHMARKS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(BENCHMARKS)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCHMARKS)  # the benchmarks' shared helpers (local_ranks, bench_reference, ...)

MODES = ("plain-eager", "plain-compiled", "tp-eager", "tp-split", "tp-traced", "tp-eager-nocomm", "tp-traced-nocomm")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/1p3b_lowrank.json")
    ap.add_argument("--override", action="append", default=[], help="config override KEY=VALUE (repeatable)")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--micro-batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode of the compiled modes (reduce-overhead: CUDA graphs)")
    ap.add_argument("--tensor-parallel", type=int, default=1, help="processes (devices); the tp- modes' tensor size")
    ap.add_argument("--case-timeout", type=float, default=600, help="seconds per mode before it counts as hung")
    ap.add_argument("--no-sequence-parallel", action="store_true", help="the tensor path without SP")
    ap.add_argument("--emulate", type=int, default=None, metavar="N",
                    help="one process as rank 0 of a tensor group of N on the fake process group")
    ap.add_argument("--inductor-config", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config.KEY (a Python literal) in each mode's process, e.g. combo_kernels=True")
    ap.add_argument("--cpp-wrapper", action=argparse.BooleanOptionalAction, default=None,
                    help="compiled blocks launch through Inductor's C++ wrapper (default: as the launcher's "
                         "training.cpp_wrapper auto, on where CUDA is and the mode replays no CUDA graphs)")
    ap.add_argument("--keep-collective-autograd", action="store_true",
                    help="keep torch's autograd kernels on the traced collectives (the path before)")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="after the timed window, profile 3 more steps per mode: DIR/<mode>.txt lists the ops by host time, "
                         "DIR/<mode>.trace.json.gz is their timeline (chrome://tracing, Perfetto)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one mode, JSON to --out
    ap.add_argument("--dump-stacks-after", type=float, default=None, help=argparse.SUPPRESS)  # internal
    args = ap.parse_args(argv)
    args.inductor_settings = {}  # --inductor-config parsed: {key: value}, applied in each mode's process
    for setting in args.inductor_config:
        import ast
        import torch._inductor.config as inductor_config
        key, sep, value = setting.partition("=")
        if not sep or not hasattr(inductor_config, key):
            ap.error(f"--inductor-config {setting!r}: not KEY=VALUE with KEY a torch._inductor.config setting")
        try:
            args.inductor_settings[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            ap.error(f"--inductor-config {setting!r}: {value!r} is not a Python literal")
    if args.emulate is not None:
        if args.emulate < 2:
            ap.error(f"--emulate takes the tensor size of the emulated group (>= 2), got {args.emulate}")
        if args.tensor_parallel != 1:
            ap.error("--emulate runs one process: leave --tensor-parallel at 1")
        nocomm = [m for m in ([args.case] if args.case else args.modes) if m.endswith("-nocomm")]
        if nocomm:
            ap.error(f"--emulate: {nocomm[0]} drops the collectives of a one-rank group; the emulated group has none to drop")
    return args


def emulated_tensor_parallel(size: int, sequence_parallel: bool):
    """Rank 0 of a tensor group of `size` on the fake process group joined in run_case."""
    import torch.distributed as dist
    from megatron_sffn.parallel.mappings import TensorParallel
    return TensorParallel(group=dist.new_group(list(range(size))), size=size, rank=0,
                          sequence_parallel=sequence_parallel)


def tensor_parallel(size: int, rank: int, sequence_parallel: bool):
    """Tensor parallelism over every process; of size 1 it still takes the tensor-parallel path."""
    import torch.distributed as dist
    from megatron_sffn.parallel.mappings import TensorParallel
    group = dist.new_group(list(range(size)))
    if size > 1:
        return TensorParallel(group=group, size=size, rank=rank, sequence_parallel=sequence_parallel)

    @dataclasses.dataclass(frozen=True)
    class OneRankTensorParallel(TensorParallel):
        @property
        def enabled(self) -> bool:
            return True

    return OneRankTensorParallel(group=group, size=1, rank=0, sequence_parallel=sequence_parallel)


def skip_collectives() -> None:
    """Every tensor-group collective becomes the identity (exact on a group of one rank)."""
    from megatron_sffn.parallel import mappings, regions, sequence
    identity = {"gather_rows": lambda t, *a, **k: (t, None), "reduce_scatter_rows": lambda t, *a, **k: (t, None),
                "sum_over_group": lambda t, *a, **k: (t, None), "gather_last_dim": lambda t, *a, **k: t}
    for module in (mappings, regions, sequence):
        for name, fn in identity.items():
            if hasattr(module, name):
                setattr(module, name, fn)
    import types
    import torch.distributed as dist
    from megatron_sffn.parallel import cross_entropy  # the vocab-parallel loss's three all-reduces
    cross_entropy.dist = types.SimpleNamespace(all_reduce=lambda *a, **k: None, ReduceOp=dist.ReduceOp)


def run_case(mode: str, args) -> dict:
    if args.dump_stacks_after:  # a hung rank says where it waits before it is killed
        import faulthandler
        faulthandler.dump_traceback_later(args.dump_stacks_after, exit=False)
    import torch
    import torch.distributed as dist
    from torch._dynamo.utils import counters
    from megatron_sffn.config import load_config
    from megatron_sffn.model import GPTModel
    from megatron_sffn.model.compile import compile_blocks
    from megatron_sffn.parallel.collectives import traced_collectives_bypass_autograd

    cuda = torch.cuda.is_available()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(1)  # a shared CPU's cores oversubscribed make every op crawl
    if args.emulate:
        from tools.emulate_rank import init_fake_group
        init_fake_group(args.emulate)  # its traced collectives one kernel each, as bench_train --emulate has them
    else:
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                **({"device_id": device} if cuda else {}))
    cfg = load_config(os.path.join(ROOT, args.config), ["model.ffn.init=\"normal\""] + args.override)
    tp = None
    if mode.startswith("tp-"):
        sequence_parallel = not args.no_sequence_parallel
        tp = (emulated_tensor_parallel(args.emulate, sequence_parallel) if args.emulate
              else tensor_parallel(world, rank, sequence_parallel))
    if args.inductor_settings:
        import torch._inductor.config as inductor_config
        for key, value in args.inductor_settings.items():
            setattr(inductor_config, key, value)
    if args.keep_collective_autograd:
        import megatron_sffn.model.compile as compile_module
        compile_module.bypass_autograd_of_traced_collectives = lambda: None
    if mode.endswith("-nocomm"):
        if world != 1:
            raise SystemExit(f"{mode} runs on one device only (it drops the collectives)")
        skip_collectives()
    model = GPTModel(cfg.model, tp).initialize(1234, device=device).to(device)
    if cuda:
        model.to(torch.bfloat16)
    if mode.endswith(("compiled", "split", "traced", "traced-nocomm")):
        graphs = args.compile_mode in ("reduce-overhead", "max-autotune")  # the modes that replay CUDA graphs
        cpp_wrapper = (cuda and not graphs) if args.cpp_wrapper is None else args.cpp_wrapper  # the launcher's auto
        compile_blocks(model, collectives_in_graphs=mode != "tp-split", mode=args.compile_mode, cpp_wrapper=cpp_wrapper)
    generator = torch.Generator().manual_seed(0)
    shape = (args.micro_batch_size, cfg.model.seq_length)
    batches = [torch.randint(0, cfg.model.vocab_size, shape, generator=generator).to(device) for _ in range(4)]

    def step(i):
        if args.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        ids = batches[i % len(batches)]
        loss = model.loss(ids, ids)
        loss.backward()
        for p in model.parameters():
            p.grad = None
        return loss

    first_loss = float(step(0).detach())
    for i in range(1, args.warmup):
        step(i)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    host, repeats, start = [], [], time.perf_counter()
    for i in range(args.steps):
        t0 = time.perf_counter()
        loss = step(i)
        if i % len(batches) == 0:   # step 0's batch again, same weights (no optimizer): the same loss
            repeats.append(loss.detach().clone())   # a replay overwrites its output; no sync here
        host.append(time.perf_counter() - t0)
    sync()
    # with CUDA graphs a collective racing its neighbours (pytorch#113895) shows here, not in step 0 (eager)
    loss_drift = max((abs(float(x) - first_loss) for x in repeats), default=0.0)
    wall = (time.perf_counter() - start) / args.steps
    if args.profile:
        profile_steps(step, mode, rank, args.profile, cuda)
    dist.barrier()
    dist.destroy_process_group()
    if args.dump_stacks_after:
        import faulthandler
        faulthandler.cancel_dump_traceback_later()
    return {"mode": mode, "tensor_parallel": tp.size if tp is not None else 1, "emulated": bool(args.emulate), "processes": world, "step_ms": 1e3 * wall, "host_ms": 1e3 * sum(host) / len(host),
            "collective_autograd_bypassed": traced_collectives_bypass_autograd(),
            "graph_breaks": sum(counters["graph_break"].values()), "graphs": counters["stats"]["unique_graphs"],
            "first_loss": first_loss, "repeated_loss_max_drift": loss_drift, "layers": cfg.model.num_layers, "device": str(device),
            "device_name": torch.cuda.get_device_name() if cuda else "cpu"}


def profile_steps(step, mode: str, rank: int, directory: str, cuda: bool) -> None:
    """Three profiled steps; the table sorted by self host time says where a block's host cost goes.
    Then three more under cProfile: the Python functions by own time (<mode>.python.txt)."""
    import cProfile
    import io
    import pstats
    import torch
    from torch.profiler import ProfilerActivity, profile
    python_profile = cProfile.Profile()
    python_profile.enable()
    for i in range(3):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    python_profile.disable()
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        text = io.StringIO()
        pstats.Stats(python_profile, stream=text).sort_stats("tottime").print_stats(45)
        with open(os.path.join(directory, f"{mode}.python.txt"), "w") as f:
            f.write(f"# {mode}: 3 steps under cProfile, by own time\n{text.getvalue()}")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(3):
            step(i)
        if cuda:
            torch.cuda.synchronize()
    if rank == 0:
        os.makedirs(directory, exist_ok=True)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=70)
        with open(os.path.join(directory, f"{mode}.txt"), "w") as f:
            f.write(f"# {mode}: 3 steps, sorted by self host time\n{table}\n")
        import gzip
        trace = os.path.join(directory, f"{mode}.trace.json")
        prof.export_chrome_trace(trace)
        with open(trace, "rb") as src, gzip.open(trace + ".gz", "wb") as dst:
            dst.write(src.read())
        os.remove(trace)


def run_in_subprocess(mode: str, args, out_path: str) -> dict:
    """The mode on --tensor-parallel processes; rank 0's result, or a row saying it hung or failed."""
    from local_ranks import run_local_ranks
    cmd = [sys.executable, os.path.abspath(__file__), "--case", mode, "--out", out_path, "--config", args.config,
           "--micro-batch-size", str(args.micro_batch_size), "--steps", str(args.steps),
           "--warmup", str(args.warmup)] + [f"--override={o}" for o in args.override]
    if args.no_sequence_parallel:
        cmd.append("--no-sequence-parallel")
    if args.emulate:
        cmd += ["--emulate", str(args.emulate)]
    if args.keep_collective_autograd:
        cmd.append("--keep-collective-autograd")
    if args.cpp_wrapper is not None:
        cmd.append("--cpp-wrapper" if args.cpp_wrapper else "--no-cpp-wrapper")
    cmd += [f"--inductor-config={setting}" for setting in args.inductor_config]
    if args.compile_mode:
        cmd += ["--compile-mode", args.compile_mode]
    if args.profile:
        cmd += ["--profile", os.path.abspath(args.profile)]
    cmd += ["--dump-stacks-after", str(args.case_timeout - min(15.0, args.case_timeout / 2))]
    ranks = run_local_ranks(cmd, args.tensor_parallel, args.case_timeout)
    if ranks.hung:
        return {"mode": mode, "hung": True, "after_s": args.case_timeout, "output_tail": ranks.tails(6000)}
    if ranks.failed:
        return {"mode": mode, "failed": ranks.codes, "output_tail": ranks.tails()}
    with open(out_path) as f:
        return json.load(f)


def print_table(rows) -> None:
    base = {r["mode"]: r for r in rows if "step_ms" in r}.get("plain-compiled")
    print(f"{'mode':<16}{'ms/step':>10}{'host ms':>10}{'ms/block':>10}{'vs plain-compiled':>19}"
          f"{'breaks':>8}{'graphs':>8}{'loss':>10}{'drift':>10}")
    for r in rows:
        if "step_ms" not in r:
            print(f"{r['mode']:<16}  {'HUNG after %.0f s' % r['after_s'] if r.get('hung') else 'FAILED'}")
            continue
        ratio = f"{r['step_ms'] / base['step_ms']:.2f}x" if base else "-"
        print(f"{r['mode']:<16}{r['step_ms']:>10.1f}{r['host_ms']:>10.1f}{r['step_ms'] / r['layers']:>10.2f}"
              f"{ratio:>19}{r['graph_breaks']:>8}{r['graphs']:>8}{r['first_loss']:>10.4f}"
              f"{r.get('repeated_loss_max_drift', float('nan')):>10.1e}")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.case:
        result = run_case(args.case, args)
        if os.environ.get("RANK", "0") == "0":
            with open(args.out, "w") as f:
                json.dump(result, f)
        from local_ranks import leave_and_exit
        leave_and_exit(0)
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            rows.append(run_in_subprocess(mode, args, os.path.join(tmp, f"{mode}.json")))
            row = rows[-1]
            print(f"{mode}: " + (f"{row['step_ms']:.1f} ms/step" if "step_ms" in row else
                                 ("hung" if row.get("hung") else "failed") + "\n" + row["output_tail"]), flush=True)
    print_table(rows)
    if args.out:
        import torch
        meta = {"config": args.config, "tensor_parallel": args.tensor_parallel, "emulate": args.emulate,
                "keep_collective_autograd": args.keep_collective_autograd, "inductor_config": args.inductor_config, "overrides": args.override, "micro_batch_size": args.micro_batch_size,
                "steps": args.steps, "warmup": args.warmup, "sequence_parallel": not args.no_sequence_parallel,
                "compile_mode": args.compile_mode, "cpp_wrapper": args.cpp_wrapper,
                "torch": torch.__version__, "date": datetime.date.today().isoformat()}
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
