"""Runs side by side, one per slot (a GPU, or a CPU process in smoke mode), within a deadline.

A device call has a hard wall-clock limit, so a run is started only when its estimated
time fits in what is left, longest first (the long runs take the fresh slots, short ones
fill the gaps). A run still going at the deadline is stopped and reported "stopped"; the
next call starts it again from step 0 (launch.py says why). The estimate is start-up plus
tokens at a rate measured on the runs finished so far (this call's and the carried ones),
or the prior rate given on the command line until one has finished.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .launch import RunProcess, stop_all


class Estimator:
    """Seconds a run will take: `startup_s` plus its tokens at the measured (or prior) rate."""

    def __init__(self, tokens_per_s: Optional[float] = None, startup_s: float = 35.0):
        self.prior, self.startup_s = tokens_per_s, startup_s
        self.rates: List[float] = []

    def add(self, records: Iterable[Dict]) -> None:
        for r in records:
            busy = (r.get("wall_s") or 0) - self.startup_s
            if r.get("status") == "ok" and r.get("tokens") and busy > 0:
                self.rates.append(r["tokens"] / busy)

    @property
    def tokens_per_s(self) -> Optional[float]:
        if not self.rates:
            return self.prior
        rates = sorted(self.rates)
        return rates[len(rates) // 2]

    def __call__(self, tokens: int) -> Optional[float]:
        rate = self.tokens_per_s
        return None if not rate else self.startup_s + tokens / rate


def longest_first(plans: Sequence) -> List:
    return sorted(plans, key=lambda p: -p.tokens)      # stable: sweep order among equals


def pick(pending: Sequence, left_s: float, estimate: Estimator, min_start_s: float):
    """The first (longest) pending run whose estimate fits in `left_s`; with no estimate yet,
    any run when at least `min_start_s` is left."""
    for plan in pending:
        guess = estimate(plan.tokens)
        if (guess is None and left_s >= min_start_s) or (guess is not None and guess <= left_s):
            return plan
    return None


def run_pool(plans: Sequence, slots: Sequence[str], start: Callable[[object, str], RunProcess],
             on_finish: Callable[[object, Dict], None], estimate: Estimator, deadline: Optional[float] = None,
             min_start_s: float = 20.0, grace_s: float = 20.0, poll_s: float = 0.5,
             clock: Callable[[], float] = time.perf_counter) -> Dict[str, str]:
    """Run `plans` on `slots`; returns {name: why it was not started} for those left over.
    Interrupted (Ctrl-C, SIGTERM turned into SystemExit), it stops and records its runs first."""
    pending = longest_first(plans)
    running: Dict[int, tuple] = {}                       # slot's index -> (plan, process)
    try:
        _loop(pending, running, slots, start, on_finish, estimate, deadline, min_start_s, grace_s, poll_s, clock)
    except BaseException:
        stop_all([job for _, job in running.values()], grace_s=10.0)
        for plan, job in running.values():
            on_finish(plan, job.finish("stopped: the sweep was interrupted"))
        raise
    left = math.inf if deadline is None else max(0.0, deadline - clock())
    return {p.name: f"not started: {left:.0f} s left before the deadline"
                    + (f", needs ~{estimate(p.tokens):.0f} s" if estimate(p.tokens) is not None else "")
            for p in pending}


def _loop(pending, running, slots, start, on_finish, estimate, deadline, min_start_s, grace_s, poll_s, clock):
    while pending or running:
        for index, (plan, job) in list(running.items()):
            if job.poll() is not None:
                del running[index]
                record = job.finish()
                estimate.add([record])
                on_finish(plan, record)
        left = math.inf if deadline is None else deadline - clock()
        if left <= 0 and running:
            stop_all([job for _, job in running.values()], grace_s)
            for plan, job in running.values():
                on_finish(plan, job.finish(f"stopped at the call's deadline after {job.elapsed_s():.0f} s"))
            running.clear()
        for index, slot in enumerate(slots):  # by index: a GPU named twice is two slots on it
            if index in running:
                continue
            plan = pick(pending, left, estimate, min_start_s)
            if plan is None:
                break
            pending.remove(plan)
            running[index] = (plan, start(plan, slot))
        if not running:
            break
        time.sleep(poll_s)


def simulate(plans: Sequence, slots: int, call_s: float, estimate: Estimator,
             min_start_s: float = 20.0) -> List[List[Tuple[int, str, float, float]]]:
    """The calls the sweep needs if every run takes exactly its estimate, with run_pool's policy:
    per call, [(slot, run, start s, end s)]. A run longer than a whole call is an error."""
    pending, calls = longest_first(plans), []
    while pending:
        free_at, placed = [0.0] * slots, []
        while min(free_at) < math.inf:
            slot = free_at.index(min(free_at))
            plan = pick(pending, call_s - free_at[slot], estimate, min_start_s)
            if plan is None:
                free_at[slot] = math.inf          # nothing fits in what is left of this slot's call
                continue
            pending.remove(plan)
            end = free_at[slot] + (estimate(plan.tokens) or 0.0)
            placed.append((slot, plan.name, free_at[slot], end))
            free_at[slot] = end
        if not placed:
            raise ValueError(f"{pending[0].name} needs ~{estimate(pending[0].tokens):.0f} s, more than a "
                             f"call's {call_s:.0f} s")
        calls.append(placed)
    return calls
