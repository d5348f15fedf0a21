"""Who holds a torch-extensions build lock, and whether it is provably stale.

torch.utils.cpp_extension (DeepSpeed's JIT-built ops go through it) creates
`<TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions/py*_*>/<op>/lock` with O_EXCL, keeps it
open while it builds, and removes it at the end; every other process polls until the file
is gone. A build killed in between leaves the file behind and every later start waits on
it forever, silently. The file holds no owner, but its owner keeps it open: on a local file
system, a lock that no process on this machine has open is stale.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import List, Optional

# File systems shared between machines: a process on another node may hold the lock there.
NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph",
                        "glusterfs", "9p", "afs", "panfs", "wekafs", "virtiofs"}


@dataclass
class LockState:
    path: str
    op: str                       # the extension being built: the lock's folder name
    holders: Optional[List[int]]  # PIDs on this machine with the lock open; None = cannot be known
    local: bool                   # on a file system no other machine writes to

    @property
    def stale(self) -> bool:
        return self.local and self.holders == []

    def describe(self, waited_s: float) -> str:
        """One line: what is waited on and what to do about it."""
        if self.stale:
            return (f"stale build lock {self.path}: a build of the JIT op '{self.op}' was killed and no process "
                    f"holds the lock, so every start would wait on it forever; remove it with: rm -f {self.path}")
        if self.holders:
            pid = self.holders[0]
            return (f"waiting {waited_s:.0f} s on the build lock {self.path}: process {pid} ({command_of(pid)}) "
                    f"is building the JIT op '{self.op}', which is built once per installation and then reused")
        where = "on a file system other machines share" if not self.local else "where processes cannot all be seen"
        return (f"waiting {waited_s:.0f} s on the build lock {self.path} ({where}): no process on this machine "
                f"holds it; if no job elsewhere is building the JIT op '{self.op}', it is stale: rm -f {self.path}")


def inspect_lock(path: str, recheck_s: float = 1.0) -> Optional[LockState]:
    """The lock's state, or None once it is gone. A lock with no holder is looked at twice,
    `recheck_s` apart: its owner closes it an instant before removing it."""
    state = _look(path)
    if state is not None and state.holders == [] and recheck_s:
        time.sleep(recheck_s)
        state = _look(path)
    return state


def _look(path: str) -> Optional[LockState]:
    if not os.path.exists(path):
        return None
    return LockState(path=path, op=os.path.basename(os.path.dirname(path)), holders=holders_of(path),
                     local=not on_network_file_system(path))


def holders_of(path: str) -> Optional[List[int]]:
    """PIDs of this machine's processes that have `path` open; None when some cannot be read."""
    if not os.path.isdir("/proc/self/fd"):
        return None
    target = os.path.realpath(path)
    pids, unknown = [], False
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = os.path.join("/proc", entry, "fd")
        try:
            fds = os.listdir(fd_dir)
        except FileNotFoundError:
            continue            # exited meanwhile
        except PermissionError:
            unknown = True      # another user's process: it could hold the lock
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == target:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    if pids:
        return pids
    return None if unknown else []


def on_network_file_system(path: str) -> bool:
    """True when `path` is on a shared (or unknown) file system, per /proc/mounts."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return True
    real = os.path.realpath(path)
    best, kind = "", None
    for point, fs_type in mounts:
        point = point.replace("\\040", " ")
        if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best, kind = point, fs_type
    return kind is None or kind in NETWORK_FILE_SYSTEMS or kind.startswith("fuse")


def command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            text = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "exited"
    return text[:120] or "?"
