"""Which rank prints an error found before the process group exists.

Every rank of a launch parses the same command line, reads the same config and (on one
machine) the same files, so each finds the same problem on its own and exits 2; printing it
from each would repeat the line once per rank. Rank 0 prints it. A rank on another machine
than rank 0 may see other files (a dataset copied to one node only), so the first rank of
each such machine prints too, naming itself: a problem is never silent. A rank that stays
silent waits a few seconds before it exits: launchers end every rank as soon as one exits,
and rank 0 must have printed by then.
"""
from __future__ import annotations

import os
import socket
import sys
import time

RANK_ENV = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
LOCAL_RANK_ENV = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
WORLD_SIZE_ENV = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
SILENT_RANK_GRACE_S = 5.0


def _first_int(names, default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return default


def launch_rank() -> int:
    """This process's global rank as its launcher set it (0 when started alone)."""
    return _first_int(RANK_ENV, 0)


def launch_world_size() -> int:
    return _first_int(WORLD_SIZE_ENV, 1)


def _rank0_is_on_this_machine() -> bool:
    address = os.environ.get("MASTER_ADDR")
    if not address:
        return False
    if address in LOOPBACK:
        return True
    try:
        host = socket.gethostname()
        mine = {host, socket.getfqdn(), *socket.gethostbyname_ex(host)[2]}
        return address in mine or socket.gethostbyname(address) in mine
    except OSError:
        return False


def reports_errors() -> bool:
    """True on rank 0, and on the first rank of a machine rank 0 is not on."""
    if launch_rank() == 0:
        return True
    return _first_int(LOCAL_RANK_ENV, -1) == 0 and not _rank0_is_on_this_machine()


def report(message: str) -> None:
    """The one line `error: message` on stderr, from the ranks that report (see reports_errors);
    the others wait SILENT_RANK_GRACE_S before returning (the caller then exits)."""
    if not reports_errors():
        time.sleep(SILENT_RANK_GRACE_S)
        return
    rank = launch_rank()
    where = f" (rank {rank} on {socket.gethostname()})" if rank else ""
    print(f"error: {message}{where}", file=sys.stderr, flush=True)
