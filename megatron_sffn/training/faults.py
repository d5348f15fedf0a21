"""Stop requests (SIGTERM/SIGINT, wall-clock limit) and the non-finite step counter.

A signal only sets a flag; the loop checks it between steps and every rank agrees on the
decision through one tiny all-reduce, so all ranks save the same checkpoint and exit together.
That all-reduce runs on the CPU (a gloo group made at install(), or the default group when it
is gloo): over NCCL it needed a device tensor and its `.item()`, a wait for the device every
step of a multi-GPU run.
"""
from __future__ import annotations

import signal
import time
from typing import Optional

import torch
import torch.distributed as dist


class StopRequests:
    def __init__(self, exit_duration_minutes: Optional[float] = None, exit_interval: Optional[int] = None):
        self.started = time.time()
        self.limit_s = exit_duration_minutes * 60.0 if exit_duration_minutes else None
        self.exit_interval = exit_interval
        self.signal_name: Optional[str] = None
        self._previous = {}
        self._group = None  # the host group of agreed_reason (None: the default group)

    def install(self) -> "StopRequests":
        """Collective when distributed (every rank calls it at the same point): makes the
        CPU group the stop decision is agreed over, where the default group is not gloo."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._on_signal)
        if _distributed() and "gloo" not in str(dist.get_backend()):
            self._group = dist.new_group(backend="gloo")
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def local_reason(self, step: Optional[int] = None) -> Optional[str]:
        if self.signal_name:
            return f"received {self.signal_name}"
        if self.limit_s is not None and time.time() - self.started >= self.limit_s:
            return f"reached --exit-duration-minutes ({self.limit_s / 60:.1f} min)"
        if self.exit_interval and step is not None and step > 0 and step % self.exit_interval == 0:
            return f"reached --exit-interval {self.exit_interval}"
        return None

    def agreed_reason(self, device=None, step: Optional[int] = None) -> Optional[str]:
        """The stop reason if ANY rank wants to stop (all ranks return the same answer).
        Agreed on the host (`device` is not used any more; kept for callers)."""
        reason = self.local_reason(step)
        if not _distributed():
            return reason
        code = torch.tensor([0 if reason is None else (1 if self.signal_name else 2)])
        dist.all_reduce(code, op=dist.ReduceOp.MAX, group=self._group)
        if code.item() == 0:
            return None
        return reason or ("a signal on another rank" if code.item() == 1 else "the wall-clock limit")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class NonFiniteGuard:
    """Counts skipped steps; too many in a row means the run is diverging and must stop."""

    def __init__(self, max_in_a_row: int):
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0

    def record(self, skipped: bool) -> None:
        if skipped:
            self.in_a_row += 1
            self.total += 1
        else:
            self.in_a_row = 0

    @property
    def should_stop(self) -> bool:
        return self.in_a_row >= self.max_in_a_row

    def state_dict(self):
        return {"in_a_row": self.in_a_row, "total": self.total}

    def load_state_dict(self, state):
        self.in_a_row, self.total = state["in_a_row"], state["total"]
