"""Start-up never hangs silently: launchers/pretrain.py says what it waits on within seconds
(MEGATRON_SFFN_STARTUP_REPORT_S, 30 by default), and a stale JIT build lock stops it with the
command that clears it.

The locks are planted in a TORCH_EXTENSIONS_DIR made for the test (never the real cache), in
the folder of DeepSpeed's shared-memory communication op, which every CPU start loads.
"""
import os
import re
import subprocess
import sys
import time

import pytest

from megatron_sffn.training.build_lock import inspect_lock
from megatron_sffn.training.startup_watch import StartupWatch

from .runs import TINY, Ranks

pytestmark = pytest.mark.slow

ARGS = TINY + ["--train-steps", "1", "--eval-interval", "100", "--save-interval", "100"]
OP = "deepspeed_shm_comm"


def wait_for_line(ranks, needle, timeout=240):
    """Rank 0's output once it holds `needle` (the ranks are left running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = ranks.output(0)
        if needle in out:
            return out
        if ranks.procs[0].poll() is not None:
            break
        time.sleep(0.5)
    ranks.signal_all(9)
    raise AssertionError(f"no '{needle}' from rank 0:\n{ranks.output(0)[-4000:]}")


def plant_lock(tmp_path):
    extensions = tmp_path / "torch_extensions"
    (extensions / OP).mkdir(parents=True)
    lock = extensions / OP / "lock"
    lock.write_bytes(b"")
    return extensions, lock


def test_stale_build_lock_is_reported_with_the_command_that_clears_it(tmp_path):
    """A lock left by a killed build: no process holds it, so the run stops (exit 2) with one line
    naming it and `rm -f`, instead of waiting forever; the lock itself is left alone."""
    extensions, lock = plant_lock(tmp_path)
    env = {"TORCH_EXTENSIONS_DIR": str(extensions), "MEGATRON_SFFN_STARTUP_REPORT_S": "2"}
    started = time.monotonic()
    ranks = Ranks(1, ARGS + ["--run-dir", str(tmp_path / "run")], str(tmp_path / "logs"), extra_env=env)
    codes, out = ranks.wait(timeout=120)
    assert codes == [2], out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: stale build lock {lock}: a build of the JIT op '{OP}' was killed and no process "
                      f"holds the lock, so every start would wait on it forever; remove it with: rm -f {lock}"], out
    assert time.monotonic() - started < 60
    assert lock.exists() and not (tmp_path / "run").exists()


def test_lock_held_by_a_building_process_is_named_with_that_process(tmp_path):
    extensions, lock = plant_lock(tmp_path)
    lock.unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time; os.open(sys.argv[1], os.O_CREAT | os.O_EXCL); "
                               "time.sleep(300)", str(lock)])
    ranks = None
    try:
        while not lock.exists():
            time.sleep(0.05)
        env = {"TORCH_EXTENSIONS_DIR": str(extensions), "MEGATRON_SFFN_STARTUP_REPORT_S": "2"}
        ranks = Ranks(1, ARGS + ["--run-dir", str(tmp_path / "run")], str(tmp_path / "logs"), extra_env=env)
        out = wait_for_line(ranks, f"on the build lock {lock}: process {holder.pid}")
        assert f"is building the JIT op '{OP}'" in out and "[start-up] rank 0: waiting" in out
        assert ranks.procs[0].poll() is None   # a live build is waited for, not abandoned
    finally:
        if ranks is not None:
            ranks.signal_all(9)
        holder.kill()
        holder.wait()


def test_missing_rank_at_the_rendezvous_is_named_with_the_address(tmp_path):
    """Rank 0 of a world of 2 started alone: it says whom it waits for, and where."""
    ranks = Ranks(2, ARGS + ["--run-dir", str(tmp_path / "run")], str(tmp_path / "logs"),
                  extra_env={"MEGATRON_SFFN_STARTUP_REPORT_S": "2"})
    ranks.procs[1].kill()                     # the rank that never arrives
    try:
        out = wait_for_line(ranks, "for the rendezvous of 2 ranks at 127.0.0.1:")
        line = next(l for l in out.splitlines() if "rendezvous of 2 ranks" in l)
        assert re.match(r"\[start-up\] rank 0: still waiting after \d+ s for the rendezvous of 2 ranks at "
                        r"127\.0\.0\.1:\d+ \(MASTER_ADDR:MASTER_PORT\)", line), line
    finally:
        ranks.signal_all(9)


def test_watch_names_a_phase_that_blocks(capfd):
    """The watchdog reports from its own thread while the main thread is blocked in a wait."""
    watch = StartupWatch(rank=3, report_after_s=0.2).start()
    try:
        with watch.phase("rank 0 to build the sample indices in /some/cache"):
            time.sleep(1.5)
        time.sleep(0.5)                       # after the phase: nothing more is said
    finally:
        watch.close()
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("[start-up] rank 3: still waiting after ")
    assert lines[0].endswith("for rank 0 to build the sample indices in /some/cache")


def test_inspect_lock_tells_stale_from_held(tmp_path):
    lock = tmp_path / "op" / "lock"
    lock.parent.mkdir()
    assert inspect_lock(str(lock)) is None
    lock.write_bytes(b"")
    stale = inspect_lock(str(lock), recheck_s=0.1)
    assert stale.stale and stale.holders == [] and stale.op == "op"
    fd = os.open(lock, os.O_RDONLY)
    try:
        held = inspect_lock(str(lock))
        assert not held.stale and held.holders == [os.getpid()]
    finally:
        os.close(fd)
