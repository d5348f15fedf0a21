"""Start a test's rank processes from an interpreter that has already imported torch and DeepSpeed.

Every rank of a multi-process test used to be a fresh `python script.py`, and each spent
2-3 s of CPU importing torch, Dynamo, Inductor and DeepSpeed before its first line of work:
with 2 to 8 ranks on 2 cores that start-up was most of a short launch. Here the ranks are
forked from a multiprocessing forkserver that imported those once (`set_forkserver_preload`,
started when the tests are collected: tests/conftest.py); a forked rank then runs the same
script as `__main__` (runpy) with its own argv, environment, working directory and log file,
is a main process to multiprocessing again, and exits with the code (or the signal) the
script would have exited with. The package under test is not preloaded: every rank imports
it itself, as a fresh process does.

What differs from a fresh interpreter: the preloaded modules' import-time output (DeepSpeed's
"Setting accelerator to CPU" warning) is not in the rank's log, and all ranks share the
server's str hash seed (fresh ranks each draw their own, unless PYTHONHASHSEED is set).
MEGATRON_SFFN_TEST_FRESH_RANKS=1 starts every rank as a fresh interpreter, as before.

`start()` returns a `subprocess.Popen`-like handle (pid, poll, wait, send_signal, kill,
returncode). A launch whose environment differs from the server's in a variable that torch
or DeepSpeed read when imported (threads, devices, TORCH_*/DS_* settings) gets a fresh
interpreter instead.
"""
from __future__ import annotations

import atexit
import io
import multiprocessing
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional

# what the server imports once; each is imported by every rank anyway
PRELOAD = ["torch", "torch.distributed", "torch._dynamo", "deepspeed",
           # DeepSpeed imports it in its first initialize(); it brings in torch._inductor (~1 s)
           "deepspeed.runtime.zero.muon.muon_optimizer"]
# the server's environment for what the preloaded modules read when imported; a launch whose
# variables with these prefixes differ from the server's starts a fresh interpreter
SERVER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
IMPORT_TIME_PREFIXES = ("OMP_", "MKL_", "CUDA_", "TORCH", "PYTORCH", "DS_", "DEEPSPEED", "TRITON", "NCCL_",
                        "GLOO_", "KMP_", "PYTHON")
# read when used, not when imported (the package sets TORCH_EXTENSIONS_DIR in the test process)
RUNTIME_ONLY = {"PYTHONPATH", "PYTHONUNBUFFERED", "TORCH_EXTENSIONS_DIR"}
FRESH_ENV = "MEGATRON_SFFN_TEST_FRESH_RANKS"
LAUNCHES = {"forked": 0, "fresh": 0}   # how this session's launches were started
SERVER_LOG: Optional[str] = None       # the server's own output
# multiprocessing's class of a main process (the module deletes its name); this module is
# imported in the test process and in the server, both main processes
_MAIN_PROCESS = type(multiprocessing.process.current_process())
assert _MAIN_PROCESS.__name__ == "_MainProcess", _MAIN_PROCESS

_lock = threading.Lock()
_context = None
_server_env: Optional[Dict[str, str]] = None


def _import_time_env(env: Dict[str, str]) -> Dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_PREFIXES) and k not in RUNTIME_ONLY}


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _get_context():
    """The forkserver context, its server started with SERVER_ENV (once per test session)."""
    global _context, _server_env, SERVER_LOG
    with _lock:
        if _context is None:
            from multiprocessing import forkserver
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(PRELOAD)
            saved = dict(os.environ)
            os.environ.update(SERVER_ENV)
            # the server's own output (DeepSpeed's import-time warning, a failed import) goes to
            # a file of its own, not into the test output
            log = tempfile.NamedTemporaryFile("w", prefix="megatron_sffn_tests_preload_", suffix=".log",
                                              delete=False)
            atexit.register(_remove, log.name)
            streams = [os.dup(1), os.dup(2)]
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                forkserver.ensure_running()
                _server_env = _import_time_env(dict(os.environ))
            finally:
                os.dup2(streams[0], 1)
                os.dup2(streams[1], 2)
                for fd in streams:
                    os.close(fd)
                log.close()
                os.environ.clear()
                os.environ.update(saved)
            SERVER_LOG = log.name
            _context = context
        return _context


def warm_up() -> None:
    """Start the server now (it imports in the background; the first launch waits for it)."""
    if os.environ.get(FRESH_ENV) != "1":
        _get_context()


def _exit_code(code) -> int:
    """What the interpreter exits with for SystemExit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _forget_multiprocessing_parent() -> None:
    """Make the forked rank a main process to multiprocessing, as a fresh interpreter is: the
    platform's default start method (the forkserver's child would default to forkserver), no
    parent process, its own resource tracker started when first needed, the server's pipes closed."""
    from multiprocessing import forkserver, process, resource_tracker
    multiprocessing.set_start_method(None, force=True)
    process._current_process = _MAIN_PROCESS()
    process._parent_process = None
    process._children = set()
    for fd in (forkserver._forkserver._forkserver_alive_fd, resource_tracker._resource_tracker._fd):
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    forkserver._forkserver = forkserver.ForkServer()
    resource_tracker._resource_tracker = resource_tracker.ResourceTracker()
    for name in ("ensure_running", "get_inherited_fds", "connect_to_new_process", "set_forkserver_preload"):
        setattr(forkserver, name, getattr(forkserver._forkserver, name))
    for name in ("ensure_running", "register", "unregister", "getfd"):
        setattr(resource_tracker, name, getattr(resource_tracker._resource_tracker, name))


def _run_script(script: str, args: List[str], env: Dict[str, str], cwd: str, log_path: str) -> None:
    """In the forked rank: become `python script args` (never returns)."""
    code = 1
    try:
        fd = os.open(log_path, os.O_WRONLY)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        unbuffered = bool(env.get("PYTHONUNBUFFERED"))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=unbuffered)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace",
                                      line_buffering=True, write_through=unbuffered)
        sys.stdin = open(os.devnull)
        _forget_multiprocessing_parent()
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        script = os.path.abspath(script)
        # a fresh interpreter's path: the script's folder, PYTHONPATH, then the installation
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        rest = [p for p in sys.path if p and p not in extra]
        sys.path[:] = [os.path.dirname(script), *extra, *rest]
        sys.argv = [script, *args]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as e:
            code = _exit_code(e.code)
        except KeyboardInterrupt:
            # python ends an unhandled ^C by dying of SIGINT
            sys.excepthook(*sys.exc_info())
            code = -signal.SIGINT
        except BaseException:  # noqa: B902 - an uncaught exception: traceback and exit 1, as python does
            sys.excepthook(*sys.exc_info())
            code = 1
        # what the interpreter does on the way out: wait for non-daemon threads, atexit
        threading._shutdown()
        atexit._run_exitfuncs()
    except BaseException:  # noqa: B902 - a failure of this function itself: say where
        import traceback
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        if code < 0:
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)


class ForkedRank:
    """The part of subprocess.Popen the launch helpers use, for a rank forked from the server."""

    def __init__(self, process):
        self._process = process
        self.pid = process.pid
        self.args = None

    @property
    def returncode(self):
        return self._process.exitcode

    def poll(self):
        return self._process.exitcode

    def wait(self, timeout: Optional[float] = None):
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def start(script: str, args: List[str], env: Dict[str, str], cwd: str, log_path: str):
    """`python script *args` with this environment and working directory, stdout and stderr
    to log_path (truncated): a ForkedRank, or a subprocess.Popen where a fresh interpreter is
    needed (see the module's docstring)."""
    with open(log_path, "w") as log:
        fresh = os.environ.get(FRESH_ENV) == "1" or env.get(FRESH_ENV) == "1"
        context = None if fresh else _get_context()
        if fresh or _import_time_env(env) != _server_env:
            LAUNCHES["fresh"] += 1
            return subprocess.Popen([sys.executable, script, *args], cwd=cwd, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
    LAUNCHES["forked"] += 1
    process = context.Process(target=_run_script, args=(script, list(args), dict(env), cwd, log_path),
                              name=f"rank:{os.path.basename(script)}")
    try:
        process.start()
    except Exception as error:
        with open(SERVER_LOG) as f:
            raise RuntimeError(f"the preloaded server did not start {script}; its output:\n{f.read()[-4000:]}") from error
    handle = ForkedRank(process)
    handle.args = [sys.executable, script, *args]
    return handle
