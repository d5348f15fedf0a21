"""Does torch.cuda.max_memory_allocated see memory held by CUDA-graph trees' private pool?

With training.cuda_graphs the 1.3B runs reported a lower allocated peak than compiled alone
(1 GPU: 29.5 -> 26.5 GB at micro-batch 8, 17.5 -> 13.8 GB at 2), and the planner, which does not
model graphs, sits 15-37% above those emulated TP peaks. If the graphs' pool is outside the
allocated counters, that drop is accounting, not memory. This runs one small MLP (activations
saved for backward of known size) forward and backward eagerly, compiled, and compiled with
mode="reduce-overhead" (CUDA-graph trees), and prints each mode's allocated peak, reserved peak
and the device's used memory (cudaMemGetInfo) after the timed steps; JSON with --out.

    python benchmarks/graph_pool_accounting.py [--out FILE]
"""
from __future__ import annotations

import argparse
import gc
import json
import sys

GB = 1e9


def measure(mode: str, width: int, depth: int, tokens: int, steps: int) -> dict:
    import torch
    torch.manual_seed(0)
    layers = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())
                                   for _ in range(depth)]).cuda().to(torch.bfloat16)
    fn = layers if mode == "eager" else torch.compile(layers, mode=None if mode == "compile" else mode)
    x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)

    def step():
        if mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
        layers.zero_grad(set_to_none=True)   # gradients of the graphs' last run are its pool's
        fn(x).float().square().mean().backward()

    for _ in range(3):                      # warm-up: compile, record the graphs
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    row = {"mode": mode, "max_allocated_gb": torch.cuda.max_memory_allocated() / GB,
           "max_reserved_gb": torch.cuda.max_memory_reserved() / GB, "device_used_gb": (total - free) / GB,
           "saved_activations_gb": 2 * depth * tokens * width * 2 / GB,   # linear input + GELU input, bf16
           "parameters_gb": sum(p.numel() for p in layers.parameters()) * 2 / GB}
    return row


def release() -> None:
    import torch
    gc.collect()
    torch._dynamo.reset()
    torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=4096)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--modes", nargs="+", default=["eager", "compile", "reduce-overhead"],
                   choices=["eager", "compile", "reduce-overhead"])
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    for name in ("width", "depth", "tokens", "steps"):
        if getattr(args, name) <= 0:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    import torch
    if not torch.cuda.is_available():
        print("error: graph_pool_accounting.py needs a CUDA device", file=sys.stderr)
        return 2
    rows = []
    for mode in args.modes:
        rows.append(measure(mode, args.width, args.depth, args.tokens, args.steps))
        release()
    print(f"{'mode':<16} {'alloc peak GB':>13} {'reserved peak GB':>16} {'device used GB':>14} {'saved act. GB':>13}")
    for r in rows:
        print(f"{r['mode']:<16} {r['max_allocated_gb']:>13.2f} {r['max_reserved_gb']:>16.2f} "
              f"{r['device_used_gb']:>14.2f} {r['saved_activations_gb']:>13.2f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"torch": torch.__version__, "device": torch.cuda.get_device_name(), "args": vars(args),
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
