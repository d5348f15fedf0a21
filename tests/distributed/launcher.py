"""Start N local processes the way torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
run one worker script in each, and collect what rank 0 reports. The processes are forked from
an interpreter that has imported torch and DeepSpeed already (tests/preloaded.py).

Each process gets one CPU thread: several ranks share 2 cores in CI, and oversubscribed
intra-op threads make gloo collectives crawl.
"""
from __future__ import annotations

import os
import tempfile
import time
from typing import Dict, List, Optional

from megatron_sffn.parallel.launch import free_port
from tests import preloaded

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker_env(rank: int, world: int, port: int, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    for key in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        env.pop(key, None)
    env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""), CUDA_VISIBLE_DEVICES="")
    env.update(extra or {})
    return env


def _wait_all(procs, timeout: float) -> list:
    """Exit codes; once one rank fails (its peers would block in a collective) or time runs
    out, the rest are killed."""
    deadline = time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = any(c not in (None, 0) for c in codes)
        if all(c is not None for c in codes):
            return codes
        if failed or time.monotonic() > deadline:
            for p, c in zip(procs, codes):
                if c is None:
                    p.kill()
                    p.wait()
            return [c if c is not None else ("timeout" if not failed else "killed") for c in codes]
        time.sleep(0.1)


def run_ranks(world: int, script: str, args: List[str], out_dir: str, timeout: float = 600,
              extra_env: Optional[Dict[str, str]] = None) -> None:
    """Run `python script args --out out_dir` on `world` ranks; raise with every rank's log tail on failure."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        logs = [os.path.join(tmp, f"rank{r}.log") for r in range(world)]
        procs = [preloaded.start(script, [*args, "--out", out_dir], worker_env(r, world, port, extra_env), ROOT,
                                 logs[r])
                 for r in range(world)]
        codes = _wait_all(procs, timeout)
        if any(c != 0 for c in codes):
            text = []
            for r, log in enumerate(logs):
                with open(log) as f:
                    text.append(f"---- rank {r} (exit {codes[r]}) ----\n" + f.read()[-6000:])
            raise AssertionError("distributed worker failed:\n" + "\n".join(text))
