import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def pytest_collection_finish(session):
    """Start the server the rank processes are forked from (tests/preloaded.py) as soon as a
    collected test module uses it: it imports torch and DeepSpeed while the first tests run."""
    preloaded = sys.modules.get("tests.preloaded")
    if preloaded is not None and session.items:
        preloaded.warm_up()


# DeepSpeed's CPU shared-memory all-reduce (deepspeed/ops/csrc/cpu/comm/shm.cpp) creates one
# /dev/shm segment of 66 MB per rank whenever LOCAL_SIZE is set (the deepspeed launcher sets
# it) and never unlinks it: every launcher test left its ranks' segments behind, ~0.8 GB a
# session, in memory (tmpfs) until the machine was rebooted or ran out of it.
SHM_DIR = "/dev/shm"
SHM_PREFIX = "deepspeed_allreduce_buffer_"


def _deepspeed_segments() -> set:
    try:
        return {name for name in os.listdir(SHM_DIR) if name.startswith(f"{SHM_PREFIX}{os.getuid()}_")}
    except OSError:
        return set()


def _mapped_segments() -> set:
    """Names of the segments some live process still maps."""
    names = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as maps:
                names.update(os.path.basename(line.split()[-1]) for line in maps if SHM_PREFIX in line)
        except OSError:
            continue
    return names


_SEGMENTS_BEFORE = pytest.StashKey[set]()


def pytest_sessionstart(session):
    session.config.stash[_SEGMENTS_BEFORE] = _deepspeed_segments()


def pytest_sessionfinish(session):
    """Remove the segments this session's runs left: new since the start and mapped by no live
    process (the rank that creates one maps it at once: two seconds spare a run starting now)."""
    before = session.config.stash.get(_SEGMENTS_BEFORE, None)
    if before is None:
        return
    left = _deepspeed_segments() - before
    if not left:
        return
    for name in left - _mapped_segments():
        path = os.path.join(SHM_DIR, name)
        try:
            if time.time() - os.path.getmtime(path) > 2:
                os.unlink(path)
        except OSError:
            pass
