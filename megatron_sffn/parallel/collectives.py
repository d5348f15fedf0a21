"""The tensor group's collectives, eager or traced into a torch.compile graph.

Eager, they are torch.distributed's calls (asynchronous where the caller overlaps them with
a GEMM: a work handle comes back). While torch.compile traces, they are the functional
collectives instead, which Dynamo puts into the graph: a compiled tensor-parallel block is
then one forward and one backward graph, not a piece between every two collectives with
torch.distributed's Python layer and a graph-cache lookup at each (the host time that bound
tensor parallelism on the H200s, docs/performance.md). Inductor places each wait before the
first use of the result, so a collective still runs beside the independent GEMMs after it.

torch 2.13 renamed the single-tensor all-gather and reduce-scatter (all_gather_single,
reduce_scatter_single; the old names warn) and 2.11 has only the old ones; names are looked
up at each call, not bound at import, so a wrapper installed on torch.distributed
(benchmarks/bench_scaling.py's traffic counter) sees every eager call.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Optional, Tuple

import torch
import torch.distributed as dist


def all_gather_single(*args, **kwargs):
    return (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(*args, **kwargs)


def reduce_scatter_single(*args, **kwargs):
    return (getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor)(*args, **kwargs)


def _functional(new: str, old: str):
    import torch.distributed._functional_collectives as functional
    return getattr(functional, new, None) or getattr(functional, old)


def tracing() -> bool:
    return torch.compiler.is_compiling()


# The functional collectives the compiled blocks call, and the wait each result needs.
TRACED_OPS = ("all_gather_into_tensor", "reduce_scatter_tensor", "all_reduce", "wait_tensor")
_autograd_bypass = None  # the torch.library registration; it lasts as long as this reference


def bypass_autograd_of_traced_collectives() -> bool:
    """Let the compiled graphs call the functional collectives below autograd; True if in effect.

    torch (2.10 on) registers Python autograd formulas for `_c10d_functional` ops, and the
    dispatcher enters them on every call of the op and of its `wait_tensor`, grad mode on or
    off: a compiled tensor-parallel block calls ~9 collectives and 9 waits per micro-batch,
    each spending ~20 us in `torch/_library/autograd.py` before it redispatches (docs/performance.md,
    tensor parallelism). This project never differentiates through those ops: every collective
    sits inside one of its own autograd Functions (mappings.py, sequence.py, regions.py), whose
    backward names the transposed collective. So their Autograd kernel falls through to the
    implementation, as it did before torch gave them one. Process-wide, for the process's
    lifetime; idempotent.
    """
    global _autograd_bypass
    if _autograd_bypass is None:
        import torch.distributed._functional_collectives  # noqa: F401  (registers the ops and their autograd)
        library = torch.library.Library("_c10d_functional", "IMPL")
        with warnings.catch_warnings():  # "Overriding a previously registered kernel": that is the point
            warnings.simplefilter("ignore")
            for op in TRACED_OPS:
                _override_autograd_kernel(library, op)
        _autograd_bypass = library
    return traced_collectives_bypass_autograd()


def _override_autograd_kernel(library, op: str) -> None:
    """A fallthrough Autograd kernel for `op`. torch 2.13's Library.impl overrides a kernel
    another Python registration made when told to (allow_override); 2.11's refuses it in a
    Python-side check, so there the registration goes to the dispatcher's handle directly,
    as Library.impl itself does after that check."""
    fallthrough = torch.library.fallthrough_kernel
    if "allow_override" in inspect.signature(library.impl).parameters:
        library.impl(op, fallthrough, "Autograd", allow_override=True)
    else:
        library.m.impl(op, "Autograd", fallthrough, False)


def traced_collectives_bypass_autograd() -> bool:
    """Whether every op in TRACED_OPS skips autograd (bypass_autograd_of_traced_collectives)."""
    import torch.distributed._functional_collectives  # noqa: F401
    names = [f"_c10d_functional::{op}" for op in TRACED_OPS]
    return all(torch._C._dispatch_has_kernel_for_dispatch_key(name, "Autograd")
               and torch._C._dispatch_kernel_for_dispatch_key_is_fallthrough(name, "Autograd") for name in names)


def gather_rows(local: torch.Tensor, group, size: int, async_op: bool = False
                ) -> Tuple[torch.Tensor, Optional[object]]:
    """(n, ...) on each rank -> (size n, ...) in rank order: (result, work to wait on or None)."""
    if tracing():
        return _functional("all_gather_single", "all_gather_tensor")(local, 0, group), None
    out = local.new_empty((size * local.shape[0],) + tuple(local.shape[1:]))
    return out, all_gather_single(out, local, group=group, async_op=async_op)


def reduce_scatter_rows(full: torch.Tensor, group, size: int, async_op: bool = False
                        ) -> Tuple[torch.Tensor, Optional[object]]:
    """(size n, ...) partial sums -> this rank's summed (n, ...) rows: (result, work or None)."""
    if full.shape[0] % size:
        raise ValueError(f"{full.shape[0]} tokens cannot be split over {size} tensor ranks")
    if tracing():
        return _functional("reduce_scatter_single", "reduce_scatter_tensor")(full, "sum", 0, group), None
    out = full.new_empty((full.shape[0] // size,) + tuple(full.shape[1:]))
    return out, reduce_scatter_single(out, full, group=group, async_op=async_op)


def sum_over_group(t: torch.Tensor, group, async_op: bool = False) -> Tuple[torch.Tensor, Optional[object]]:
    """All-reduce (sum) of a tensor the caller owns: in place eager, a new tensor traced."""
    if tracing():
        return _functional("all_reduce", "all_reduce")(t, "sum", group), None
    return t, dist.all_reduce(t, group=group, async_op=async_op)


def gather_last_dim(x: torch.Tensor, group, size: int) -> torch.Tensor:
    """Each rank's slice of the last dim -> the whole last dim, in rank order."""
    if tracing():
        return _functional("all_gather_single", "all_gather_tensor")(x.contiguous(), x.dim() - 1, group)
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=-1)
