"""Where FP8 pays: one product's forward and both gradients, compiled, in bf16 and in FP8
(tensorwise and rowwise), over the shapes a 1.3B-13B model's layers give a GPU.

Each case is one weight of one layer kind (attention qkv and proj, dense fc1 and fc2, a
LowRank factor, a BlockDense or BlockShuffle block-diagonal factor) at a number of tokens
per micro-batch. The time is the median of CUDA-event-timed fwd+bwd calls of a
torch.compile'd product, so the casts fuse as they do in training. A call launches its
kernels from Python: below ~0.5 ms of GPU work (the small products, 2048 tokens) the host's
launches set the time, and FP8's extra cast kernels count against it more than they do in a
training step, where the host runs ahead of the GPU. So each case is also profiled
(--profile-calls calls per side): its kernel time per call by the step ledger's rows
(profile_summary.py: GEMMs, "FP8 scales and casts", elementwise, copies) and the idle rest,
which splits FP8's gap into what its GEMMs save, what its casts add and what the host costs.
The end-to-end comparison (bench_train.py --variant 'fp8:training.fp8.enabled=true') is what
decides. The crossovers of megatron_sffn/fp8/dispatch.py (MIN_TOKENS, MIN_WIDTH) come from
this table.

  python benchmarks/bench_fp8.py --out fp8.json             (GPU with FP8 tensor cores)
  python benchmarks/bench_fp8.py --smoke                    (CPU: tiny shapes, checks it runs)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (case, weight shape (out, in) or (blocks, q, p)) for d = 2048 (1.3B) and d = 2560 (2.7B); ffn 4d;
# LowRank rank d/4 (the configs' R=512 at 1.3B), block-diagonal factors with 4 blocks
SHAPES = [
    ("qkv d2048", (6144, 2048)), ("proj d2048", (2048, 2048)),
    ("fc1 dense d2048", (8192, 2048)), ("fc2 dense d2048", (2048, 8192)),
    ("lowrank V d2048 r512", (512, 2048)), ("lowrank U f8192 r512", (8192, 512)),
    ("lowrank V f8192 r512", (512, 8192)), ("lowrank U d2048 r512", (2048, 512)),
    ("block V d2048 4x", (4, 128, 512)), ("block U f8192 4x", (4, 2048, 512)),
    ("fc1 dense d2560", (10240, 2560)), ("lowrank V d2560 r640", (640, 2560)),
    ("lowrank U f10240 r640", (10240, 640)),
]
SMOKE_SHAPES = [("dense", (64, 32)), ("lowrank V", (16, 64)), ("block", (2, 16, 16))]
TOKENS = [2048, 4096, 8192, 16384]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=TOKENS)
    ap.add_argument("--recipes", nargs="+", default=["tensorwise", "rowwise"], choices=["tensorwise", "rowwise"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--cases", nargs="+", default=None, metavar="TEXT",
                    help="only the cases whose name contains one of these")
    ap.add_argument("--profile-calls", type=int, default=5,
                    help="calls per side under torch.profiler for the kernel split (0: none)")
    ap.add_argument("--out", default=None, help="JSON results")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU, eager, 2 repeats")
    return ap.parse_args(argv)


def _timer(device):
    """ms of one call of fn, median of repeats (CUDA events on a GPU, the wall clock elsewhere)."""
    import time

    import torch

    def measure(fn, repeats):
        for _ in range(3):
            fn()
        times = []
        for _ in range(repeats):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
        return statistics.median(times)
    return measure


# the split's rows, in print order (the other ledger rows, attention and the like, stay 0 here)
SPLIT_ROWS = ("GEMMs", "FP8 scales and casts", "elementwise/norm", "gradient copies and casts", "other", "idle")


def kernel_split(fn, device, calls: int) -> dict:
    """{"busy": ms, row: ms, ...} per call of fn from `calls` calls under torch.profiler: the
    kernels' time by ledger row (on a CPU, the host ops' own time; a compiled step's Inductor
    kernels show by name with torch._inductor.config.cpp.enable_kernel_profile), and idle =
    the profiled wall time less the busy time."""
    import torch

    from profile_summary import profiled_ledger

    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    fn()
    result = profiled_ledger(lambda i: fn(), calls, sync, cuda)
    rows = result["ms_per_step"]
    return {"busy": result["busy_ms_per_step"], **{row: rows[row] for row in SPLIT_ROWS}}


def case_times(shape, tokens, recipes, device, compiled, repeats, profile_calls=0) -> dict:
    """{"bf16": ms, recipe: ms, ...} for one weight shape at one token count, fwd+bwd; with
    profile_calls, also {"split": {side: kernel_split}}."""
    import torch

    from megatron_sffn.fp8.recipe import E4M3, E5M2, Fp8Recipe
    from megatron_sffn.structured.ops import apply_product

    in_features = shape[1] if len(shape) == 2 else shape[0] * shape[2]
    x = torch.randn(tokens, in_features, device=device, dtype=torch.bfloat16, requires_grad=True)
    measure = _timer(device)
    out, split = {}, {}
    for name in ["bf16", *recipes]:
        w = torch.nn.Parameter((torch.randn(*shape, device=device) * 0.02).to(torch.bfloat16))
        if name != "bf16":
            w.fp8_recipe = Fp8Recipe(name, E4M3 if name == "rowwise" else E5M2)

        def step(w=w):
            y = apply_product(x, w)
            y.backward(torch.ones_like(y))

        fn = torch.compile(step) if compiled else step
        out[name] = measure(fn, repeats)
        if profile_calls:
            split[name] = kernel_split(fn, device, profile_calls)
    return {**out, "split": split} if profile_calls else out


def run(args) -> list:
    import torch
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        from megatron_sffn.fp8.device import CPU_ENV
        os.environ[CPU_ENV] = "1"
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.cases:
        shapes = [(c, s) for c, s in shapes if any(t in c for t in args.cases)]
    tokens = [32] if args.smoke else args.tokens
    rows = []
    for case, shape in shapes:
        for t in tokens:
            times = case_times(shape, t, args.recipes, device, compiled=not args.smoke,
                               repeats=2 if args.smoke else args.repeats, profile_calls=args.profile_calls)
            split = times.pop("split", None)
            rows.append({"case": case, "shape": list(shape), "tokens": t, "ms": times,
                         "speedup": {r: times["bf16"] / times[r] for r in args.recipes},
                         **({"kernel_ms": split} if split else {})})
            torch._dynamo.reset()
    return rows


def print_table(rows, recipes) -> None:
    head = f"{'case':<24}{'shape':>18}{'tokens':>8}{'bf16 ms':>10}" + "".join(
        f"{r + ' ms':>15}{'x':>7}" for r in recipes)
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<24}{str(tuple(r['shape'])):>18}{r['tokens']:>8}{r['ms']['bf16']:>10.3f}"
              + "".join(f"{r['ms'][k]:>15.3f}{r['speedup'][k]:>7.2f}" for k in recipes))
    if any("kernel_ms" in r for r in rows):
        print_split(rows)


def print_split(rows) -> None:
    """Kernel ms per call by row, one line per case and side: what the GEMMs take, what FP8's
    scales and casts add, the other kernels and the host's share (idle)."""
    print("\nkernel ms per call (profiled; idle: the GPU waiting on the host)")
    head = (f"{'case':<24}{'tokens':>8}{'side':>12}{'GEMMs':>9}{'casts':>9}{'other':>9}{'idle':>9}"
            f"{'GEMMs x':>9}")
    print(head)
    print("-" * len(head))
    for r in rows:
        for side, k in r.get("kernel_ms", {}).items():
            rest = k["busy"] - k["GEMMs"] - k["FP8 scales and casts"]
            ratio = r["kernel_ms"]["bf16"]["GEMMs"] / k["GEMMs"] if k["GEMMs"] else float("nan")
            print(f"{r['case']:<24}{r['tokens']:>8}{side:>12}{k['GEMMs']:>9.3f}{k['FP8 scales and casts']:>9.3f}"
                  f"{rest:>9.3f}{k['idle']:>9.3f}{ratio:>9.2f}")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    if not args.smoke:
        from megatron_sffn.fp8.device import fp8_problem
        problem = fp8_problem()
        if problem:
            print(f"error: {problem} (use --smoke on the CPU)", file=sys.stderr)
            return 2
    rows = run(args)
    print_table(rows, args.recipes)
    if args.out:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.smoke else "cpu"
        with open(args.out, "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
