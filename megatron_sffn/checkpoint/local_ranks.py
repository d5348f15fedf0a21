"""Run one command in N local CPU processes that form a gloo world (what checkpoint tools
need to rebuild the training engine in a given layout on any machine, GPU or not).

Each process gets the variables torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), no visible GPU and few threads. Output goes to one log per rank; a
rank that fails writes its one-line error to `<error_dir>/rank<N>.txt` (see
`report_worker_error`). Once any rank fails, the others (which would wait forever in a
collective) are stopped, and the first error is raised as WorkerError.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional

from ..parallel.launch import free_port

ERROR_DIR_ENV = "MEGATRON_SFFN_ERROR_DIR"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkerError(RuntimeError):
    """A rank failed; the message is its own one-line error (or its log's last lines).
    `code` is 2 when a rank reported a problem with the input (it exited with 2), else 1."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _env(rank: int, world: int, port: int, error_dir: str) -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "PMIX_RANK",
                "MV2_COMM_WORLD_RANK"):
        env.pop(key, None)
    threads = str(max(1, (os.cpu_count() or 1) // world))
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="", DS_ACCELERATOR="cpu",
               OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    env[ERROR_DIR_ENV] = error_dir
    return env


def report_worker_error(message: str) -> None:
    """Called by a failing worker: leave its one-line error for the coordinator."""
    directory = os.environ.get(ERROR_DIR_ENV)
    print(f"error: {message}", file=sys.stderr, flush=True)
    if directory:
        with open(os.path.join(directory, f"rank{os.environ.get('RANK', '0')}.txt"), "w") as f:
            f.write(message)


def run_local_ranks(world: int, args: List[str], timeout: Optional[float] = None, echo_rank0: bool = False) -> None:
    """`python args...` on `world` local ranks; returns when all succeed, raises WorkerError otherwise."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="megatron_sffn_ranks_") as tmp:
        error_dir = os.path.join(tmp, "errors")
        os.makedirs(error_dir)
        logs = [open(os.path.join(tmp, f"rank{r}.log"), "w+") for r in range(world)]
        procs = []
        try:
            for r in range(world):
                out = None if (echo_rank0 and r == 0) else logs[r]
                procs.append(subprocess.Popen([sys.executable, *args], env=_env(r, world, port, error_dir),
                                              stdout=out, stderr=subprocess.STDOUT if out else None))
            codes = _wait(procs, timeout)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        if all(c == 0 for c in codes):
            return
        raise WorkerError(_first_error(error_dir, logs, codes), 2 if 2 in codes else 1)


def _wait(procs, timeout: Optional[float]) -> list:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return codes
        failed = any(c not in (None, 0) for c in codes)
        if failed:
            time.sleep(0.5)  # let the failing rank's peers report their own error first, if they have one
            codes = [p.poll() for p in procs]
        if failed or (deadline is not None and time.monotonic() > deadline):
            for p, c in zip(procs, codes):
                if c is None:
                    p.kill()
                    p.wait()
            return [c if c is not None else ("killed" if failed else "timeout") for c in codes]
        time.sleep(0.1)


def _first_error(error_dir: str, logs, codes) -> str:
    reports = sorted(os.listdir(error_dir), key=lambda n: int(n[4:-4]))
    if reports:
        with open(os.path.join(error_dir, reports[0])) as f:
            return f.read().strip()
    if all(c == "timeout" for c in codes if c != 0):
        return f"conversion ranks timed out (exit codes {codes})"
    rank = next(i for i, c in enumerate(codes) if c not in (0, "killed", "timeout"))
    logs[rank].seek(0)
    tail = [line for line in logs[rank].read().splitlines() if line.strip()][-15:]
    return f"rank {rank} of the conversion failed (exit code {codes[rank]}):\n" + "\n".join(tail)
