"""Distributed start-up that works under every launcher with no code change.

Launchers differ only in how a process learns its place:
  deepspeed / torchrun   RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT are set
  mpirun / mpiexec       only the MPI library's variables (OMPI_*, PMI_*, PMIX_*): DeepSpeed's
                         MPI discovery asks mpi4py and fills in the five variables above
  python script.py       nothing: one process, world size 1, on a free local port
The backend is NCCL when CUDA is available, else gloo (CPU).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Optional

import torch
import torch.distributed as dist

TORCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
MPI_RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK")
DEFAULT_MPI_PORT = 29500


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def under_mpi() -> bool:
    """Started by mpirun/mpiexec (Open MPI, MPICH/Hydra, PMIx, MVAPICH) without torch variables."""
    return any(key in os.environ for key in MPI_RANK_ENV)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_single_process_env() -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))


def init_distributed(backend: Optional[str] = None) -> None:
    """Join (or, alone, create) the default process group; idempotent.

    Sets the CUDA device from LOCAL_RANK before the group exists, so NCCL binds each rank
    to its own GPU. LOCAL_RANK is always left in the environment: DeepSpeed's
    PipelineModule reads it.
    """
    if dist.is_initialized():
        os.environ.setdefault("LOCAL_RANK", "0")
        return
    backend = backend or default_backend()
    has_torch_env = all(key in os.environ for key in TORCH_ENV)
    if not has_torch_env and not under_mpi():
        if "RANK" in os.environ or "WORLD_SIZE" in os.environ:
            missing = [k for k in TORCH_ENV if k not in os.environ]
            raise RuntimeError(f"distributed launch is missing environment variables {missing}; "
                               "start with deepspeed, torchrun or mpirun")
        _set_single_process_env()
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))

    from .jit_cache import use_installation_extensions_dir
    use_installation_extensions_dir()   # before DeepSpeed builds its first op (deepspeed_shm_comm, here)
    import deepspeed  # deferred: importing it is slow and not needed for config errors

    # With MPI variables only, DeepSpeed asks mpi4py for rank/size/local rank and the master
    # address; the port comes from MASTER_PORT when the user set one.
    port = int(os.environ.get("MASTER_PORT", DEFAULT_MPI_PORT))
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=True, distributed_port=port,
                               verbose=False)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def exit_process(code: int) -> None:
    """Leave with `code` once the work is done. If the process groups are already torn down
    (a finished run, or a start-up error every rank agreed on), skip the interpreter's
    teardown: now and then a rank whose run had finished and written everything aborted while
    the interpreter shut down ('terminate called without an active exception', exit -6, on
    CPU and GPU alike, never reproduced on demand), and the launcher then reported a failed
    run. Output and log handlers are flushed first. With groups still alive (another error),
    the normal exit tears them down."""
    if dist.is_available() and dist.is_initialized():
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
