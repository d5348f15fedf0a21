"""Start-up never waits silently: a watchdog thread names what a slow start-up step waits on.

Start-up steps that wait on something outside this process (the rendezvous of all ranks,
a JIT build of DeepSpeed's ops or its lock, a dataset index another rank builds) run
inside `watch.phase(description)`. When a phase has lasted MEGATRON_SFFN_STARTUP_REPORT_S
seconds (default 30), the thread looks at where the main thread is: waiting on a build lock
is reported with the lock's file and holder; a provably stale lock (its owner is gone)
stops the process with exit code 2 and the command that clears it, since nothing would ever
release it; otherwise the phase's own description (which address, which folder) is printed.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterator, Optional

from .build_lock import inspect_lock

REPORT_ENV = "MEGATRON_SFFN_STARTUP_REPORT_S"
DEFAULT_REPORT_S = 30.0
REPEAT_S = 300.0          # a wait that goes on is reported again this often
STALE_LOCK_EXIT = 2


RANK_ENV = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")   # before the process group exists


class StartupWatch:
    def __init__(self, rank: Optional[int] = None, report_after_s: Optional[float] = None):
        self.rank = rank if rank is not None else int(next((os.environ[k] for k in RANK_ENV if k in os.environ), 0))
        self.report_after_s = report_after_s if report_after_s is not None else float(
            os.environ.get(REPORT_ENV, DEFAULT_REPORT_S))
        self._phase = None            # (description, started, thread id, next report time)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup-watch", daemon=True)

    def start(self) -> "StartupWatch":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def phase(self, description: str) -> Iterator[None]:
        now = time.monotonic()
        with self._lock:
            self._phase = (description, now, threading.get_ident(), now + self.report_after_s)
        try:
            yield
        finally:
            with self._lock:
                self._phase = None

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.report_after_s / 4)):
            with self._lock:
                phase = self._phase
                if phase is None or time.monotonic() < phase[3]:
                    continue
                description, started, ident, _ = phase
                self._phase = (description, started, ident, time.monotonic() + REPEAT_S)
            self._report(description, time.monotonic() - started, ident)

    def _report(self, description: str, waited_s: float, ident: int) -> None:
        lock = _waited_lock(ident)
        state = inspect_lock(lock) if lock else None
        if state is not None and state.stale:
            print(f"error: {state.describe(waited_s)}", file=sys.stderr, flush=True)
            os._exit(STALE_LOCK_EXIT)   # the main thread is stuck in torch's wait loop: nothing else ends it
        if state is not None:
            line = state.describe(waited_s)
        elif _building_extension(ident):
            line = (f"building a JIT op for {waited_s:.0f} s (torch.utils.cpp_extension, once per machine and "
                    f"torch version) while {description}")
        else:
            line = f"still waiting after {waited_s:.0f} s for {description}"
        print(f"[start-up] rank {self.rank}: {line}", file=sys.stderr, flush=True)


def _frames(ident: int):
    frame = sys._current_frames().get(ident)
    while frame is not None:
        yield frame
        frame = frame.f_back


def _waited_lock(ident: int) -> Optional[str]:
    """The lock file torch's FileBaton.wait() polls in that thread, if it is in there."""
    for frame in _frames(ident):
        code = frame.f_code
        if code.co_name == "wait" and code.co_filename.endswith("file_baton.py"):
            baton = frame.f_locals.get("self")
            return getattr(baton, "lock_file_path", None)
    return None


def _building_extension(ident: int) -> bool:
    return any(f.f_code.co_name in ("_jit_compile", "_write_ninja_file_and_build_library") for f in _frames(ident))


def rendezvous_description() -> str:
    """What init_distributed waits on, from the launcher's environment."""
    world = os.environ.get("WORLD_SIZE")
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    if world and world != "1":
        return (f"the rendezvous of {world} ranks at {address} (MASTER_ADDR:MASTER_PORT): is every rank started, "
                "and can each reach that address?")
    return f"the distributed start-up (DeepSpeed's communication backend, rendezvous at {address})"
