"""Independent test commands started ahead of the tests that check them, two at a time.

Most commands a test runs keep about one of CI's 2 cores busy (one process, or a launcher
waiting on its ranks' start-up), and the test process only waits on them. A module whose
commands do not depend on each other starts them all from a module-scoped fixture; each test
then waits on its own (`.result()`) and checks it exactly as before. The command, its working
directory, environment, output capture and timeout are unchanged: only when it starts is.
"""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import Future, ThreadPoolExecutor

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-command")
# commands that spend most of their time asleep (a launch that stops on an input error: its silent
# ranks wait out training/early_errors.py's SILENT_RANK_GRACE_S before they exit) use almost no CPU
# while they wait, so several share the cores
_WAITING_POOL = ThreadPoolExecutor(max_workers=6, thread_name_prefix="test-waiting-command")


def start(cmd, timeout: float, cwd: str, env=None) -> Future:
    """`subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)` in the
    background (at most two at once); `.result()` is its CompletedProcess (or raises its TimeoutExpired).
    env=None is this process's environment now, not when the command starts."""
    env = dict(os.environ) if env is None else dict(env)
    return _track(_POOL.submit(subprocess.run, [str(a) for a in cmd], cwd=cwd, env=env, capture_output=True,
                               text=True, timeout=timeout))


def submit(fn, *args, **kwargs) -> Future:
    """fn(*args, **kwargs) in the same background pool (a test whose commands must run side by side
    submits one function that starts them all)."""
    return _track(_POOL.submit(fn, *args, **kwargs))


def submit_waiting(fn, *args, **kwargs) -> Future:
    """fn(*args, **kwargs) in a wider pool (six at once), for commands that mostly sleep: each does
    seconds of start-up and then waits out a grace period, so two at a time would leave the cores idle."""
    return _track(_WAITING_POOL.submit(fn, *args, **kwargs))


def selected(request) -> list:
    """The session's selected test items of the requesting fixture's module (a fixture starts only
    the commands of tests that will run: `-k` or a node id selects fewer)."""
    return [item for item in request.session.items if item.module is request.module]


def selected_params(request, name: str) -> set:
    """The values of parameter `name` among the module's selected items."""
    return {item.callspec.params[name] for item in selected(request)
            if hasattr(item, "callspec") and name in item.callspec.params}


def selected_names(request) -> set:
    """The function names (without parameters) of the module's selected tests."""
    return {item.originalname for item in selected(request)}


_submitted: list = []


def _track(future: Future) -> Future:
    _submitted.append(future)
    return future


def wait_idle() -> None:
    """Wait until every command started here has finished (for a test that times something and
    must have the cores to itself)."""
    for future in list(_submitted):
        try:
            future.result()
        except BaseException:  # noqa: B902 - its own test reports it
            pass
