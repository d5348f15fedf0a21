"""Stopping every rank together when one of them finds a problem at start-up.

A rank that raises alone leaves the others blocked in their next collective (until a
30-minute timeout, with no message); a rank that prints alone repeats the same line once per
rank. `stop_together` is a collective: every rank passes what it found (None when fine), and
if any found something, every rank raises StartupError and only rank 0 prints.
"""
from __future__ import annotations

from typing import Optional

import torch.distributed as dist


class StartupError(RuntimeError):
    """A problem found before training that stops every rank (exit code 2).

    `report` is False on ranks that leave the one line to rank 0."""

    def __init__(self, message: str, report: bool = True):
        super().__init__(message)
        self.report = report


def stop_together(problem: Optional[str]) -> None:
    """Collective: raise StartupError on every rank if any rank passes a problem."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        if problem:
            raise StartupError(problem)
        return
    found = [None] * dist.get_world_size()
    dist.all_gather_object(found, problem)
    failing = [rank for rank, message in enumerate(found) if message]
    if not failing:
        return
    first = failing[0]
    message = found[first] if first == 0 else f"{found[first]} (found by rank {first})"
    is_rank0 = dist.get_rank() == 0
    leave_together()
    raise StartupError(message, report=is_rank0)


def leave_together() -> None:
    """Tear the process group down on every rank before any exits: a rank whose peers (rank 0
    hosts the rendezvous store) vanish under a live group aborts ('terminate called ...').
    Used on the way out after an error found at start-up and after a finished run."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
