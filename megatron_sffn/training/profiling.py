"""torch.profiler over a few training steps of a run (--profile, training.profile).

Steps start_step .. end_step - 1 (1-based, as the step log counts them; Megatron-LM's
--profile-step-start/-end) are recorded on each listed rank, each step inside a range named
"train step N". At the end of the range each of those ranks writes, in <run_dir>/profile:

  rank{R}_steps{A}-{B}.pt.trace.json   the trace: TensorBoard's profiler plugin
                                      (tensorboard --logdir <run_dir>/profile), Perfetto or
                                      chrome://tracing open it
  rank{R}_steps{A}-{B}.txt             wall and device-busy time per step, then the ops by
                                      their own device time (host time on a CPU)

The busy share answers the first question about a slow layout: is the GPU waiting for the
host (a tensor-parallel rank often is, docs/performance.md) or is the step the GPU's work.
Nothing is synchronised outside the range; at its end the device is waited for once, so the
last step's kernels are in the trace.
"""
from __future__ import annotations

import os
import time
from contextlib import nullcontext
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from ..config import ProfileConfig


def merged(intervals: Iterable[Sequence[float]]) -> List[Tuple[float, float]]:
    """The union of (start, end, ...) intervals as sorted, disjoint (start, end) pairs."""
    out: List[Tuple[float, float]] = []
    for start, end, *_ in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def device_busy_us(prof) -> Optional[float]:
    """Microseconds in which at least one device kernel, copy or set ran (None: no device events)."""
    from torch.autograd import DeviceType
    spans = [(float(e.time_range.start), float(e.time_range.end)) for e in prof.events()
             if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)]
    return sum(end - start for start, end in merged(spans)) if spans else None


class StepProfiler:
    """Records the configured steps on this rank; a no-op everywhere else."""

    def __init__(self, cfg: ProfileConfig, rank: int, run_dir: str):
        self.cfg = cfg
        self.active = cfg.enabled and rank in cfg.ranks
        self.rank = rank
        self.folder = os.path.join(run_dir, "profile")
        self._prof = None
        self._started = 0.0
        self._steps = 0
        self.written: List[str] = []

    def describe(self) -> Optional[str]:
        """The banner's line, or None when nothing is profiled."""
        c = self.cfg
        if not c.enabled:
            return None
        ranks = ", ".join(str(r) for r in c.ranks)
        return (f"profile    steps {c.start_step}-{c.end_step - 1} on rank{'s' if len(c.ranks) > 1 else ''} "
                f"{ranks} -> {self.folder} (tensorboard --logdir {self.folder}, or Perfetto)")

    def step(self, number: int):
        """Context for training step `number` (1-based): starts the profiler at the range's first
        step, names the step, and stops and writes after the range's last."""
        if not self.active or not self.cfg.start_step <= number < self.cfg.end_step:
            return nullcontext()
        return _ProfiledStep(self, number)

    def _start(self) -> None:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        # acc_events: the one recording is kept whole for the table after the trace is written
        # (without it torch 2.11 warns, on CUDA, that a cycle's events are cleared)
        self._prof = profile(activities=activities, acc_events=True)
        self._prof.__enter__()
        self._started = time.perf_counter()

    def _stop(self, last: int) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        wall_ms = 1000 * (time.perf_counter() - self._started) / max(self._steps, 1)
        prof, self._prof = self._prof, None
        prof.__exit__(None, None, None)
        os.makedirs(self.folder, exist_ok=True)
        stem = os.path.join(self.folder, f"rank{self.rank}_steps{self.cfg.start_step}-{last}")
        prof.export_chrome_trace(stem + ".pt.trace.json")
        busy = device_busy_us(prof)
        key = "self_cuda_time_total" if busy is not None else "self_cpu_time_total"
        head = f"rank {self.rank}, steps {self.cfg.start_step}-{last}: wall {wall_ms:.1f} ms per step"
        if busy is not None:
            busy_ms = busy / 1000 / max(self._steps, 1)
            head += (f", device busy {busy_ms:.1f} ms ({100 * busy_ms / wall_ms:.0f}%): "
                     + ("the host keeps the GPU fed" if busy_ms >= 0.9 * wall_ms else "the GPU waits on the host"))
        with open(stem + ".txt", "w") as f:
            f.write(head + " (timed under the profiler)\n\n")
            f.write(prof.key_averages().table(sort_by=key, row_limit=40, max_name_column_width=80))
        self.written = [stem + ".pt.trace.json", stem + ".txt"]

    def close(self, last_step: int) -> None:
        """The run ended inside the range: write what was recorded."""
        if self._prof is not None:
            self._stop(last_step)


class _ProfiledStep:
    def __init__(self, owner: StepProfiler, number: int):
        self.owner, self.number = owner, number
        self._range = None

    def __enter__(self):
        if self.owner._prof is None:
            self.owner._start()
        self._range = torch.profiler.record_function(f"train step {self.number}")
        self._range.__enter__()
        return self

    def __exit__(self, *exc):
        self._range.__exit__(*exc)
        self.owner._steps += 1
        if self.number == self.owner.cfg.end_step - 1:
            self.owner._stop(self.number)
        return False
