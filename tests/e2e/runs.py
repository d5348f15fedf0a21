"""Launch launchers/pretrain.py on N local ranks (CPU, gloo) and read back what a run leaves.

Ranks are started the way torchrun starts them (RANK, WORLD_SIZE, MASTER_*), so a test can
signal each rank the way a cluster scheduler does; the deepspeed-launcher path has its own test.
Each rank is `python launchers/pretrain.py ...` forked from an interpreter that has imported
torch and DeepSpeed already (tests/preloaded.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from typing import Dict, List, Optional

from megatron_sffn.parallel.launch import free_port
from megatron_sffn.training.metrics import read_step_log
from tests import preloaded

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "launchers", "pretrain.py")

# A tiny lowrank model with self-guided training (reduce_flop draws included) on the
# embedded corpus; every interval small so a few steps exercise logging, eval and saves.
TINY = ["--config", os.path.join(ROOT, "configs", "tiny_demo.json"),
        "--override", "model.hidden_size=64", "--override", "model.num_layers=3",
        "--override", "model.num_heads=4", "--override", "model.ffn_hidden_size=256",
        "--override", "model.seq_length=32", "--override", "model.ffn.rank=16",
        "--override", "training.eval_iters=2",
        "--micro-batch-size", "4", "--global-batch-size", "16", "--log-interval", "2"]


def base_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"):
        env.pop(key, None)
    env.update(extra or {})
    return env


class Ranks:
    """N processes of one run; `wait()` returns (exit codes, rank 0's output)."""

    def __init__(self, world: int, args: List[str], log_dir: str, extra_env: Optional[Dict[str, str]] = None,
                 script: str = LAUNCHER):
        port = str(free_port())
        os.makedirs(log_dir, exist_ok=True)
        self.logs = [os.path.join(log_dir, f"rank{r}.log") for r in range(world)]
        self.procs = []
        for r in range(world):
            env = base_env(extra_env)
            env.update(RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), LOCAL_WORLD_SIZE=str(world),
                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
            self.procs.append(preloaded.start(script, args, env, ROOT, self.logs[r]))

    def signal_all(self, signum=signal.SIGTERM) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def wait(self, timeout: float = 600):
        deadline = time.monotonic() + timeout
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                for q in self.procs:
                    q.kill()
                raise AssertionError(f"run timed out; rank 0 log:\n{self.output(0)[-6000:]}")
        return codes, self.output(0)

    def output(self, rank: int) -> str:
        with open(self.logs[rank]) as f:
            return f.read()


def run(world: int, args: List[str], log_dir: str, extra_env=None, expect: int = 0, timeout: float = 600,
        script: str = LAUNCHER) -> str:
    """Run to completion; assert every rank exits with `expect`; rank 0's output."""
    ranks = Ranks(world, args, log_dir, extra_env, script=script)
    codes, out = ranks.wait(timeout)
    if any(c != expect for c in codes):
        raise AssertionError(f"exit codes {codes}, expected {expect}:\n" +
                             "\n".join(f"---- rank {r} ----\n{ranks.output(r)[-5000:]}" for r in range(world)))
    return out


def losses(run_dir: str) -> Dict[int, float]:
    return {step: rec["loss"] for step, rec in read_step_log(run_dir).items()}


def wait_for_steps(run_dir: str, steps: int, ranks: Ranks, timeout: float = 300) -> None:
    """Block until the run's step log holds `steps` records (or fail with its output)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isfile(path):
            with open(path) as f:
                if sum(1 for line in f if line.strip()) >= steps:
                    return
        if any(p.poll() is not None for p in ranks.procs):
            raise AssertionError(f"run ended before step {steps}:\n{ranks.output(0)[-5000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no step {steps} within {timeout} s:\n{ranks.output(0)[-5000:]}")


def latest(run_dir: str) -> str:
    with open(os.path.join(run_dir, "checkpoints", "latest")) as f:
        return f.read().strip()


def read_meta(run_dir: str, tag: str) -> Dict:
    with open(os.path.join(run_dir, "checkpoints", tag, "meta.json")) as f:
        return json.load(f)
