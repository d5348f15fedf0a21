"""Where a profiled training step's time goes: GPU busy time by kernel category, and the
idle gaps between kernels with the host op that was running during each.

torch.profiler's key_averages table counts a kernel under its launching op as well as
under its own name, and GPU user annotations (`Optimizer.step#...`) on top, so its totals
overstate the device time. This works on the kernel events alone: their union is the busy
time, wall time minus busy time is what the GPU spent waiting for the host.
"""
from __future__ import annotations

import functools
import itertools
import re
import time
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_sffn.training.profiling import merged  # the union of intervals, as --profile computes it

Interval = Tuple[float, float, str]  # (start_us, end_us, kernel name)
Attributed = Tuple[float, float, str, str]  # (start_us, end_us, kernel or op name, ledger row)

# first match wins; kernel names as CUDA reports them (cuBLAS nvjet/sm90 GEMMs, cuDNN's
# fused attention, PyTorch's foreach kernels, Inductor's triton_* kernels (its templates are
# GEMMs), NCCL)
CATEGORIES = (
    ("nccl", re.compile(r"nccl", re.I)),
    ("attention", re.compile(r"flash|fmha|sdpa|cudnn|attention", re.I)),
    ("gemm", re.compile(r"nvjet|gemm|cutlass|xmma|s16816|wgmma|_mm_|matmul|^triton_tem_", re.I)),
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


# ---------------------------------------------------------------------------- the ledger
# bench_ledger.py's categories: where a step's milliseconds go, comparable between two harnesses.
# Every busy microsecond lands in exactly one of them (kernels running at once share the
# time), so with "idle" they add up to the wall time.

GEMM, ATTENTION, ELEMENTWISE, OPTIMIZER = "GEMMs", "attention", "elementwise/norm", "optimizer"
COPIES, CROSS_ENTROPY, OTHER, IDLE = "gradient copies and casts", "cross-entropy", "other", "idle"
FP8_CASTS = "FP8 scales and casts"
LEDGER_ROWS = (GEMM, FP8_CASTS, ATTENTION, ELEMENTWISE, OPTIMIZER, COPIES, CROSS_ENTROPY, OTHER, IDLE)

# the profiler range both harnesses put around clipping and the optimizer step
OPTIMIZER_RANGE = "optimizer step"

# an enclosing op or range that decides the category of everything run inside it, whatever
# the kernel is called (innermost first): the optimizer step, the loss, a gradient's
# accumulation (our post-accumulate hooks' concatenate-and-copy), attention's helper kernels
SCOPES = (
    (OPTIMIZER, re.compile(rf"^{OPTIMIZER_RANGE}$|^Optimizer\.step#|clip_grad")),
    (CROSS_ENTROPY, re.compile(r"cross_?entropy|nll_?loss|log_?softmax", re.I)),
    (COPIES, re.compile(r"AccumulateGrad")),
    (ATTENTION, re.compile(r"scaled_dot_product|flash_attention|efficient_attention|cudnn_attention", re.I)),
)

# Inductor names a kernel after the aten ops it fused: triton_{poi,red,per,tem}_fused_<ops>_<n>
# cpp_: Inductor on a CPU; graph_N_cpp_: the same, named so by cpp.enable_kernel_profile
INDUCTOR = re.compile(r"^(?:graph_\d+_)?(?:triton_[a-z]+|cpp)_fused_(?P<ops>.*?)(?:_\d+)?$")
# words of the ops that only move or convert data (a kernel made of these alone is a copy or a cast)
COPY_WORDS = frozenset("to copy clone cat convert element type unsafe view permute transpose t expand slice "
                       "select unsqueeze squeeze reshape as strided lift fresh split with sizes".split())
ATEN_GEMM = re.compile(r"^aten::(?:mm|addmm|bmm|baddbmm|addbmm|matmul|linear|_addmm_activation|_scaled_mm)$")
ATEN_COPY = re.compile(r"^aten::(?:copy_|_to_copy|cat|clone|contiguous|_foreach_copy_)$")
# ops that allocate or describe a tensor and compute nothing: time spent in them is "other"
ATEN_METADATA = re.compile(r"^aten::(?:empty\w*|view\w*|reshape|_reshape_alias|t|transpose|permute|expand\w*|"
                           r"as_strided\w*|slice|select|unsqueeze|squeeze|detach\w*|alias|_unsafe_view|"
                           r"resolve_\w+|result_type|to|lift_fresh|item|_local_scalar_dense|split\w*|unbind|"
                           r"chunk|flatten|unflatten|narrow|set_|resize_|record_stream|is_\w+|size|stride|dim)$")
NAME_HINTS = (  # a kernel's or an op's own name, after the scopes; first match wins
    (CROSS_ENTROPY, re.compile(r"log_?softmax|nll_?loss|cross_?entropy", re.I)),
    (OPTIMIZER, SCOPES[0][1]),
    (OPTIMIZER, re.compile(r"adam|^aten::_foreach_(?!copy)|multi_tensor", re.I)),
    (ELEMENTWISE, re.compile(r"layer_?norm|rms_?norm|batch_?norm|group_?norm", re.I)),
    (GEMM, ATEN_GEMM),
    (COPIES, ATEN_COPY),
    (COPIES, re.compile(r"^Memcpy")),
)
# profile_summary's kernel categories that translate directly
FROM_KERNEL_CATEGORY = {"gemm": GEMM, "attention": ATTENTION, "optimizer (foreach)": OPTIMIZER,
                        "copies and casts": COPIES, "reductions": ELEMENTWISE, "elementwise": ELEMENTWISE,
                        "compiled (triton)": ELEMENTWISE, "own triton kernels": ELEMENTWISE, "nccl": OTHER}


@functools.lru_cache(maxsize=None)  # a profile repeats a few hundred names and stacks many times
def _scope(context: Tuple[str, ...]):
    for op in context:
        for label, pattern in SCOPES:
            if pattern.search(op):
                return label
    return None


def _fused_op_words(name: str) -> List[str]:
    """The words of the ops an Inductor kernel's name lists ("_to_copy_add" -> to, copy, add); none
    for any other kernel."""
    m = INDUCTOR.match(name)
    return [w for w in m.group("ops").split("_") if w] if m else []


def _inductor_fp8_cast(name: str) -> bool:
    """An Inductor kernel of megatron_sffn/fp8/scaling.py's quantize: the amax of |t| (the scale),
    or the saturating cast (a clamp, then a conversion), whatever it fused around them (a norm or
    a GELU recomputed for the cast). Nothing else a step compiles takes the amax of an absolute
    value or clamps before a conversion (a softmax's amax has no abs; the clip is not compiled)."""
    words = set(_fused_op_words(name))
    return {"abs", "amax"} <= words or {"clamp", "copy"} <= words


def _inductor_copy(name: str) -> bool:
    """An Inductor kernel that fused nothing but copies, casts and views (autocast's casts, the
    fp32 cast of a bf16 gradient); a cast fused into arithmetic counts as the arithmetic."""
    words = _fused_op_words(name)
    return bool(words) and all(w in COPY_WORDS for w in words)


@functools.lru_cache(maxsize=None)
def _name_hint(name: str):
    if _inductor_fp8_cast(name):  # before the norm's hint: a norm recomputed for its cast
        return FP8_CASTS
    for label, pattern in NAME_HINTS:
        if pattern.search(name):
            return label
    if _inductor_copy(name):
        return COPIES
    coarse = category(name)
    if coarse != "other":
        return FROM_KERNEL_CATEGORY[coarse]
    if name.startswith("aten::"):  # any other op computes something elementwise
        return None if ATEN_METADATA.match(name) else ELEMENTWISE
    return None


def ledger_category(name: str, context: Sequence[str] = ()) -> str:
    """The ledger row of a kernel (or, on CPU, of an op's own time). context: the names of the
    op that launched it and of the ops and ranges around that one, innermost first.

    GEMM, attention and NCCL kernels are recognised by name wherever they run (not an Inductor
    FP8 cast that names its _scaled_mm); then an enclosing scope decides (the optimizer range,
    the loss, gradient accumulation), because inside it the kernels have generic names (an
    elementwise multiply in the clip, a copy in a hook);
    then the name itself (Inductor's fused-op names, ATen's kernel and op names); then the
    innermost op that says anything. A CUDA graph's kernels have its replay as their op, which
    says nothing: their names decide."""
    coarse = category(name)
    # an Inductor cast kernel may name the _scaled_mm it feeds ("_mm_"): not a GEMM for that
    cast_named_like_gemm = coarse == "gemm" and _inductor_fp8_cast(name) and not name.startswith("triton_tem_")
    if coarse in ("gemm", "attention", "nccl") and not cast_named_like_gemm:  # communication: "other"
        return FROM_KERNEL_CATEGORY[coarse]
    context = tuple(context)
    candidates = itertools.chain((_scope(context), _name_hint(name)), (_name_hint(op) for op in context))
    return next((label for label in candidates if label is not None), OTHER)


def split_time(segments: Sequence[Interval]) -> Dict[str, float]:
    """Time per label of (start, end, label) segments; where n overlap, each gets 1/n of that
    stretch, so the values add up to the union of the segments (the busy time)."""
    edges = sorted({t for s, e, _ in segments for t in (s, e)})
    starts, ends = defaultdict(list), defaultdict(list)
    for s, e, label in segments:
        if e > s:
            starts[s].append(label)
            ends[e].append(label)
    active: Dict[str, int] = defaultdict(int)
    totals: Dict[str, float] = defaultdict(float)
    for t, t_next in zip(edges, edges[1:] + [None]):
        for label in ends.get(t, ()):
            active[label] -= 1
        for label in starts.get(t, ()):
            active[label] += 1
        count = sum(active.values())
        if t_next is not None and count:
            for label, n in active.items():
                if n:
                    totals[label] += (t_next - t) * n / count
    return dict(totals)


def _context(event) -> Tuple[str, ...]:
    """The names of a host op and of the ops and ranges around it, innermost first."""
    names = []
    while event is not None:
        names.append(event.name)
        event = event.cpu_parent
    return tuple(names)


def kernel_segments(prof, counts: Optional[Dict[str, int]] = None) -> List[Attributed]:
    """(start_us, end_us, name, ledger row) of every device kernel, memcpy and memset, each
    attributed with the host op that launched it: read from the profiler's raw events, which
    link a kernel to that op by correlation id in every torch 2.x (FunctionEvent does not in all).
    counts, when given, gets "kernels" and "kernels_with_host_op" (a check on the linking)."""
    from torch.autograd import DeviceType
    results = prof.profiler.kineto_results
    origin = results.trace_start_ns()
    # host ops (no link of their own) by id and start: a runtime call such as cudaLaunchKernel
    # may carry the same id, counted from 1 by CUPTI
    frontend = {(k.correlation_id(), (k.start_ns() - origin) / 1000) for k in results.events()
                if k.device_type() == DeviceType.CPU and k.linked_correlation_id() == 0}
    ops = {e.id: e for e in prof.events() if (e.id, e.time_range.start) in frontend}
    out = []
    for k in results.events():
        if k.device_type() != DeviceType.CUDA or k.is_user_annotation():
            continue
        launcher = ops.get(k.linked_correlation_id())
        out.append(((k.start_ns() - origin) / 1000, (k.end_ns() - origin) / 1000, k.name(),
                    ledger_category(k.name(), _context(launcher))))
        if counts is not None:
            counts["kernels"] = counts.get("kernels", 0) + 1
            counts["kernels_with_host_op"] = counts.get("kernels_with_host_op", 0) + (launcher is not None)
    return out


def _own_time(event) -> List[Tuple[float, float]]:
    """The stretches of a host op not covered by its child ops (its self time)."""
    start, end = event.time_range.start, event.time_range.end
    pieces, cursor = [], start
    for child in sorted(event.cpu_children, key=lambda c: c.time_range.start):
        if child.time_range.start > cursor:
            pieces.append((cursor, min(child.time_range.start, end)))
        cursor = max(cursor, child.time_range.end)
    if end > cursor:
        pieces.append((cursor, end))
    return pieces


def cpu_op_segments(prof) -> List[Attributed]:
    """(start_us, end_us, name, ledger row) of every host op's self time: the ledger of a CPU
    run, which has no kernels; each op is attributed by its own name and the ops around it."""
    from torch.autograd import DeviceType
    out = []
    for e in prof.events():
        if e.device_type != DeviceType.CPU or e.is_async:
            continue
        label = ledger_category(e.name, _context(e))
        out += [(s, t, e.name, label) for s, t in _own_time(e)]
    return out


def ledger(attributed: Sequence[Attributed], steps: int, wall_ms_per_step: float, source: str,
           top: int = 5) -> dict:
    """ms per step by ledger row (idle = wall - busy), from kernel_segments or cpu_op_segments,
    and each row's largest kernels (or ops) by their own summed time, to check the attribution."""
    times = split_time([(s, e, label) for s, e, _, label in attributed])
    rows = {label: times.get(label, 0.0) / 1000 / steps for label in LEDGER_ROWS if label != IDLE}
    busy = sum(rows.values())
    rows[IDLE] = max(0.0, wall_ms_per_step - busy)
    by_name: Dict[Tuple[str, str], float] = defaultdict(float)
    for s, e, name, label in attributed:
        by_name[label, name] += e - s
    largest = {label: [{"name": name, "ms_per_step": us / 1000 / steps}
                       for (lab, name), us in sorted(by_name.items(), key=lambda kv: -kv[1]) if lab == label][:top]
               for label in LEDGER_ROWS if label != IDLE}
    return {"source": source, "steps": steps, "wall_ms_per_step": wall_ms_per_step, "busy_ms_per_step": busy,
            "ms_per_step": rows, "largest": largest}


def profiled_ledger(run, count: int, sync, cuda: bool, top: int = 5) -> dict:
    """The ledger of `count` calls run(0) .. run(count - 1) under torch.profiler: kernels on a GPU,
    host ops on a CPU; wall = those calls back to back, the device waited for at the end only."""
    from torch.profiler import ProfilerActivity, profile
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        started = time.perf_counter()
        for i in range(count):
            run(i)
        sync()
        wall_ms = 1000 * (time.perf_counter() - started) / count
    counts: Dict[str, int] = {}
    found = kernel_segments(prof, counts) if cuda else cpu_op_segments(prof)
    return {**ledger(found, count, wall_ms, "kernels" if cuda else "host ops", top=top), **counts}
