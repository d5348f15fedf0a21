"""Run one command as N local ranks (the env torch.distributed reads), with a deadline.

For benchmarks that measure something per process group: each rank's output is kept, and a
group that does not finish by the deadline is killed and reported as hung with every rank's
output, instead of holding the benchmark (and a lent GPU machine's time) forever.
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence


@dataclasses.dataclass
class LocalRanks:
    outputs: List[str]              # stdout + stderr of each rank
    codes: List[Optional[int]]      # exit codes (None: killed at the deadline)
    hung: bool

    @property
    def failed(self) -> bool:
        return self.hung or any(self.codes)

    def tails(self, chars: int = 3000) -> str:
        return "\n".join(f"--- rank {r} ---\n{out[-chars:]}" for r, out in enumerate(self.outputs))


def run_local_ranks(cmd: Sequence[str], nproc: int, timeout: float, env: Optional[Dict[str, str]] = None,
                    cwd: Optional[str] = None) -> LocalRanks:
    from megatron_sffn.parallel.launch import free_port
    base = dict(os.environ if env is None else env, WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(free_port()))
    procs = [subprocess.Popen(list(cmd), cwd=cwd, env=dict(base, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(nproc)]
    deadline = time.monotonic() + timeout
    outputs: List[str] = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0] or "")
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            outputs = [q.communicate()[0] or "" for q in procs]
            return LocalRanks(outputs, [None] * nproc, hung=True)
    return LocalRanks(outputs, [p.returncode for p in procs], hung=False)


def leave_and_exit(code: int) -> None:
    """End a benchmark rank whose results are written: every rank done, the process groups torn
    down, output flushed, then exit without the interpreter's teardown. Even after
    destroy_process_group a CPU rank now and then aborted while the interpreter shut down
    ('terminate called without an active exception', exit -6: twice in CI over several days,
    never reproduced), which failed a run whose numbers were already out."""
    import torch.distributed as dist
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
