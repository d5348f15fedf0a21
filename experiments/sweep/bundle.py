"""The sweep's state as one small tarball: what a device call sends back and the next one carries in.

A device call returns at most 8 files of 16 MB and every call starts on a bare machine, so
the run folders travel as one tar.gz of their logs (train.log, metrics.jsonl, TensorBoard
events, sweep_record.json) without checkpoints (0.4 GB per run with the optimizer state).
Unpacked into the next call's runs folder, the finished runs are found and skipped there.
"""
from __future__ import annotations

import os
import shutil
import tarfile
from typing import List

from .launch import RECORD_FILE, read_record

LEFT_OUT = ("checkpoints",)
ENVIRONMENT_FILE = "environment.json"      # device and versions of the call that ran the runs
DATA_FILE = "data.json"                    # the corpus' manifest, for a report made without the corpus


def _finished_runs(runs_dir: str) -> List[str]:
    """Run folders whose record says the run ended (a run still going is left out)."""
    names = []
    for name in sorted(os.listdir(runs_dir)) if os.path.isdir(runs_dir) else []:
        record = read_record(os.path.join(runs_dir, name))
        if record and record.get("status") != "running":
            names.append(name)
    return names


def pack(runs_dir: str, tar_path: str) -> List[str]:
    """Write the finished runs of `runs_dir` to `tar_path` (atomically); returns their names."""
    names = _finished_runs(runs_dir)
    os.makedirs(os.path.dirname(os.path.abspath(tar_path)), exist_ok=True)
    tmp = tar_path + ".tmp"

    def keep(info: tarfile.TarInfo):
        return None if any(part in LEFT_OUT for part in info.name.split("/")) else info

    with tarfile.open(tmp, "w:gz") as tar:
        for name in names:
            tar.add(os.path.join(runs_dir, name), arcname=name, filter=keep)
        for extra in (ENVIRONMENT_FILE, DATA_FILE):
            if os.path.isfile(os.path.join(runs_dir, extra)):
                tar.add(os.path.join(runs_dir, extra), arcname=extra)
    os.replace(tmp, tar_path)
    return names


def unpack(tar_path: str, runs_dir: str) -> List[str]:
    """Restore the run folders of `tar_path` into `runs_dir`, each replacing any local folder
    of the same name (the tarball is the newer state); returns the run names."""
    os.makedirs(runs_dir, exist_ok=True)
    with tarfile.open(tar_path, "r:gz") as tar:
        members = tar.getmembers()
        tops = sorted({m.name.split("/")[0] for m in members if "/" in m.name})
        for name in tops:
            shutil.rmtree(os.path.join(runs_dir, name), ignore_errors=True)
        tar.extractall(runs_dir, members=members, filter="data")
    return [n for n in tops if os.path.isfile(os.path.join(runs_dir, n, RECORD_FILE))]
