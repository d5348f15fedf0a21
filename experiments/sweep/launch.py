"""Launching one training run in its own process on one device, stopping it, recording how it ended.

Each run is `python launchers/pretrain.py --config ... --run-dir ... --override ...` (or
`deepspeed --num_gpus 1 ...`) in a new process group, its output in `<run dir>/train.log`,
pinned to one GPU with CUDA_VISIBLE_DEVICES so that several run side by side on one host.
`sweep_record.json` in the run folder says what was launched and how it ended; it is
written when the run starts (status "running") and again when it ends, so a call killed
from outside leaves "running" behind and the next call reruns it.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

RECORD_FILE = "sweep_record.json"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_record(run_dir: str) -> Optional[Dict]:
    try:
        with open(os.path.join(run_dir, RECORD_FILE)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_record(run_dir: str, record: Dict) -> None:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RECORD_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)


def relative(path: str) -> str:
    """Paths inside the repository are recorded relative to it, so run folders can be moved."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def launch_command(launcher: str, args: List[str]) -> List[str]:
    script = os.path.join(ROOT, "launchers", "pretrain.py")
    if launcher == "deepspeed":
        from megatron_sffn.parallel.launch import free_port
        runner = shutil.which("deepspeed") or "deepspeed"
        return [runner, "--num_gpus", "1", "--master_port", str(free_port()), script, *args]
    return [sys.executable, "-u", script, *args]


def child_env(smoke: bool, device: Optional[str] = None, threads: Optional[int] = None) -> Dict[str, str]:
    """One single-process job: no inherited rank variables; one GPU when `device` is given."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if smoke:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    else:
        if device is not None:
            env["CUDA_VISIBLE_DEVICES"] = device
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)   # side-by-side runs share the host's cores
    return env


def log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read()[-20000:]
    except OSError:
        return ""
    keep = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(keep[-lines:])


class RunProcess:
    """One launched run. The folder starts empty: a stale checkpoint would be resumed and stale
    TensorBoard events mixed in, so a run that did not finish earlier starts again from step 0."""

    def __init__(self, record: Dict, run_dir: str, command: List[str], env: Dict[str, str],
                 keep_checkpoints: bool = False):
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        os.makedirs(run_dir)
        self.run_dir, self.keep_checkpoints = run_dir, keep_checkpoints
        self.record = dict(record, command=command, status="running", started=time.time())
        save_record(run_dir, self.record)
        self.log_path = os.path.join(run_dir, "train.log")
        self._start = time.perf_counter()
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def poll(self) -> Optional[int]:
        return self.proc.poll()

    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def finish(self, stopped_reason: Optional[str] = None) -> Dict:
        """Wait for the process (already ended or signalled) and write its final record."""
        self.proc.wait()
        record = self.record
        record.update(returncode=self.proc.returncode, wall_s=round(self.elapsed_s(), 1), ended=time.time())
        if stopped_reason:
            record.update(status="stopped", reason=stopped_reason)
        elif self.proc.returncode == 0:
            record["status"] = "ok"
        else:
            record.update(status="failed", reason=f"exit code {self.proc.returncode}",
                          log_tail=log_tail(self.log_path))
        if not self.keep_checkpoints:
            shutil.rmtree(os.path.join(self.run_dir, "checkpoints"), ignore_errors=True)
        save_record(self.run_dir, record)
        return record


def stop_all(jobs: List[RunProcess], grace_s: float) -> None:
    """SIGTERM every job at once (the loop stops between steps), SIGKILL what is left after grace_s."""
    for job in jobs:
        job.signal(signal.SIGTERM)
    end = time.perf_counter() + grace_s
    while any(job.poll() is None for job in jobs) and time.perf_counter() < end:
        time.sleep(0.2)
    for job in jobs:
        if job.poll() is None:
            job.signal(signal.SIGKILL)
