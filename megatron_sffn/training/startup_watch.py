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
from .early_errors import report

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
        self._phase = None            # ((description, hint), started, thread id, next report time)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="startup-watch", daemon=True)

    def start(self) -> "StartupWatch":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()

    @contextlib.contextmanager
    def phase(self, description: str, hint: Optional[str] = None) -> Iterator[None]:
        """description: what the step waits for, a noun phrase ("the rendezvous of ..."); hint:
        what to check when the wait goes on (a question or advice), added to the waiting line."""
        now = time.monotonic()
        with self._lock:
            self._phase = ((description, hint), now, threading.get_ident(), now + self.report_after_s)
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

    def _report(self, phase, waited_s: float, ident: int) -> None:
        description, hint = phase
        lock = _waited_lock(ident)
        state = inspect_lock(lock) if lock else None
        if state is not None and state.stale:
            report(state.describe(waited_s))   # every rank of the machine waits on the same lock: one line
            os._exit(STALE_LOCK_EXIT)   # the main thread is stuck in torch's wait loop: nothing else ends it
        build = _extension_build(ident)
        if state is not None:
            line = state.describe(waited_s)
        elif build is not None:
            op, folder = build
            line = (f"building the JIT op '{op}' ({waited_s:.0f} s so far) on the way to {description}; it is "
                    f"built once per installation and kept in {folder} for later runs")
        else:
            line = f"still waiting after {waited_s:.0f} s for {description}" + (f": {hint}" if hint else "")
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


def _extension_build(ident: int):
    """(op name, build folder) of the torch.utils.cpp_extension build that thread is in, or None."""
    for frame in _frames(ident):
        if frame.f_code.co_name == "_jit_compile":
            folder = frame.f_locals.get("build_directory") or "the torch extensions folder"
            return str(frame.f_locals.get("name", "?")), os.path.dirname(str(folder).rstrip(os.sep)) or folder
    return None


def rendezvous_description():
    """(what, hint) init_distributed waits on, from the launcher's environment."""
    world = os.environ.get("WORLD_SIZE")
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    if world and world != "1":
        return (f"the rendezvous of {world} ranks at {address} (MASTER_ADDR:MASTER_PORT)",
                "is every rank started, and can each reach that address?")
    return f"the distributed start-up (DeepSpeed's communication backend, rendezvous at {address})", None
