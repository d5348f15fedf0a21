"""Where a profiled training step's time goes: GPU busy time by kernel category, and the
idle gaps between kernels with the host op that was running during each.

torch.profiler's key_averages table counts a kernel under its launching op as well as
under its own name, and GPU user annotations (`Optimizer.step#...`) on top, so its totals
overstate the device time. This works on the kernel events alone: their union is the busy
time, wall time minus busy time is what the GPU spent waiting for the host.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Sequence, Tuple

Interval = Tuple[float, float, str]  # (start_us, end_us, kernel name)

# first match wins; kernel names as CUDA reports them (cuBLAS nvjet/sm90 GEMMs, cuDNN's
# fused attention, PyTorch's foreach kernels, Inductor's triton_* kernels, NCCL)
CATEGORIES = (
    ("nccl", re.compile(r"nccl", re.I)),
    ("attention", re.compile(r"flash|fmha|sdpa|cudnn|attention", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|xmma|s16816|wgmma|_mm_|matmul", re.I)),
    ("optimizer (foreach)", re.compile(r"multi_tensor_apply|foreach|adam", re.I)),
    ("compiled (triton)", re.compile(r"^triton_")),
    ("own triton kernels", re.compile(r"^_")),
    ("copies and casts", re.compile(r"copy|CatArray|(?<!no)cast", re.I)),  # not "gpu_kernel_impl_nocast"
    ("reductions", re.compile(r"reduce|norm", re.I)),
    ("elementwise", re.compile(r"elementwise|vectorized", re.I)),
)


def category(name: str) -> str:
    for label, pattern in CATEGORIES:
        if pattern.search(name):
            return label
    return "other"


def merged(intervals: Iterable[Interval]) -> List[Tuple[float, float]]:
    """The union of the intervals as sorted, disjoint (start, end) pairs."""
    out: List[Tuple[float, float]] = []
    for start, end, _ in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def busy_us(intervals: Sequence[Interval]) -> float:
    return sum(end - start for start, end in merged(intervals))


def by_category(intervals: Sequence[Interval]) -> Dict[str, float]:
    """Kernel time per category (overlapping kernels of different streams each count)."""
    totals: Dict[str, float] = {}
    for start, end, name in intervals:
        key = category(name)
        totals[key] = totals.get(key, 0.0) + (end - start)
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def gaps(intervals: Sequence[Interval], min_us: float = 100.0) -> List[Tuple[float, float]]:
    """Idle stretches of at least `min_us` between the first and the last kernel."""
    spans = merged(intervals)
    return [(a_end, b_start) for (_, a_end), (b_start, _) in zip(spans, spans[1:]) if b_start - a_end >= min_us]


def host_ops_during(host: Sequence[Interval], start: float, end: float) -> str:
    """The innermost host op covering the middle of a gap (what the CPU was doing)."""
    middle = (start + end) / 2
    covering = [(e - s, name) for s, e, name in host if s <= middle <= e]
    return min(covering)[1] if covering else "(no host op recorded)"


def events_of(prof) -> Tuple[List[Interval], List[Interval]]:
    """(device kernels, host ops) from a finished torch.profiler.profile."""
    from torch.autograd import DeviceType
    kernels, host = [], []
    for e in prof.events():
        interval = (float(e.time_range.start), float(e.time_range.end), e.name)
        if getattr(e, "is_user_annotation", False):
            continue
        if e.device_type == DeviceType.CUDA:
            kernels.append(interval)
        elif e.device_type == DeviceType.CPU:
            host.append(interval)
    return kernels, host


def summarize(kernels: Sequence[Interval], host: Sequence[Interval], steps: int, wall_ms_per_step: float,
              top_gaps: int = 8) -> Tuple[dict, str]:
    """A JSON-able summary and its text table, per step."""
    busy = busy_us(kernels) / 1000 / steps
    cats = {k: v / 1000 / steps for k, v in by_category(kernels).items()}
    idle = gaps(kernels)
    biggest = sorted(idle, key=lambda g: g[0] - g[1])[:top_gaps]
    summary = {
        "steps": steps, "wall_ms_per_step": wall_ms_per_step, "gpu_busy_ms_per_step": busy,
        "gpu_idle_ms_per_step": max(0.0, wall_ms_per_step - busy), "kernel_ms_per_step_by_category": cats,
        "gaps_over_100us_per_step": len(idle) / steps,
        "largest_gaps": [{"us": b - a, "host_op": host_ops_during(host, a, b)} for a, b in biggest],
    }
    if not kernels:
        return summary, f"per step: wall {wall_ms_per_step:.1f} ms | no device kernels recorded (CPU run)"
    lines = [f"per step: wall {wall_ms_per_step:.1f} ms | GPU busy {busy:.1f} ms | "
             f"GPU idle {summary['gpu_idle_ms_per_step']:.1f} ms", "", f"{'kernel category':<24} {'ms/step':>8}"]
    lines += [f"{k:<24} {v:>8.2f}" for k, v in cats.items()]
    lines += ["", f"idle gaps >= 100 us: {summary['gaps_over_100us_per_step']:.1f} per step; largest:"]
    lines += [f"  {g['us'] / 1000:>7.2f} ms  host: {g['host_op'][:80]}" for g in summary["largest_gaps"]]
    return summary, "\n".join(lines)
