"""Checkpoint policy around DeepSpeed's save/load: tags, `latest`, retention, per-rank RNG.

Layout under run_dir/checkpoints:
  step00000100/            DeepSpeed's files for that step (every rank writes its part)
  step00000100/meta.json   step, guide state, config: what a resume must know before building
  step00000100/rng/rank00003.pt   RNG states of each rank
  latest                   the tag of the newest COMPLETE checkpoint

`latest` is replaced atomically (write, fsync, rename) by rank 0 only after a barrier that
every rank reaches after finishing its writes, so a crash during a save leaves the previous
checkpoint as `latest`; older tags beyond `keep_last` are removed only after that.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import zipfile
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

TAG_PATTERN = re.compile(r"^step(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint on disk is missing, partial or does not fit the run."""


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> Dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointManager:
    def __init__(self, directory: str, keep_last: int, rank: int):
        self.directory, self.keep_last, self.rank = directory, keep_last, rank

    @property
    def latest_path(self) -> str:
        return os.path.join(self.directory, "latest")

    def latest_tag(self) -> Optional[str]:
        """The tag `latest` names, checked to exist; None for a fresh run."""
        if not os.path.exists(self.latest_path):
            return None
        tag = open(self.latest_path).read().strip()
        meta = os.path.join(self.directory, tag, "meta.json")
        if not TAG_PATTERN.match(tag) or not os.path.isfile(meta):
            raise CheckpointError(f"{self.latest_path} names checkpoint '{tag}', but {meta} is missing: "
                                  "the checkpoint is partial or was moved; fix 'latest' or remove it")
        return tag

    def read_meta(self, tag: str) -> Dict:
        path = os.path.join(self.directory, tag, "meta.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read checkpoint metadata {path}: {e}") from None

    def check_files(self, tag: str) -> None:
        """Every torch file of the tag is complete. torch.save writes zip archives whose index
        is at the end, so a truncated or overwritten file is found without loading it."""
        path = os.path.join(self.directory, tag)
        for root, _, names in sorted(os.walk(path)):
            for name in sorted(names):
                file = os.path.join(root, name)
                if name.endswith(".pt") and not zipfile.is_zipfile(file):
                    raise CheckpointError(
                        f"checkpoint {path} is damaged: {file} is truncated or not a torch file "
                        f"({os.path.getsize(file)} bytes); resume from an earlier checkpoint by writing its "
                        f"tag to {self.latest_path}, or start over with a new --run-dir")

    def save(self, engine, step: int, meta: Dict, client_state: Dict) -> str:
        tag = tag_for(step)
        path = os.path.join(self.directory, tag)
        if self.rank == 0:
            os.makedirs(os.path.join(path, "rng"), exist_ok=True)
        _barrier()
        engine.save_checkpoint(self.directory, tag, client_state)
        os.makedirs(os.path.join(path, "rng"), exist_ok=True)
        torch.save(rng_state(), os.path.join(path, "rng", f"rank{self.rank:05d}.pt"))
        _barrier()  # every rank has finished writing this tag
        if self.rank == 0:
            _atomic_write(os.path.join(path, "meta.json"), json.dumps(meta, indent=2))
            _atomic_write(self.latest_path, tag)
            self._prune(keep=tag)
        _barrier()
        return tag

    def load(self, engine, tag: str) -> Dict:
        client_state = engine.load_checkpoint(self.directory, tag)
        rng_file = os.path.join(self.directory, tag, "rng", f"rank{self.rank:05d}.pt")
        if os.path.isfile(rng_file):  # absent when resuming on more ranks than saved
            set_rng_state(torch.load(rng_file, weights_only=False))
        return client_state

    def tags(self) -> List[str]:
        if not os.path.isdir(self.directory):
            return []
        return sorted(t for t in os.listdir(self.directory) if TAG_PATTERN.match(t))

    def _prune(self, keep: str) -> None:
        """Keep the newest `keep_last` complete tags; drop older ones and leftovers of failed saves."""
        tags = self.tags()
        complete = [t for t in tags if os.path.isfile(os.path.join(self.directory, t, "meta.json"))]
        kept = set(complete[-self.keep_last:]) | {keep}
        for old in tags:
            if old not in kept:
                shutil.rmtree(os.path.join(self.directory, old), ignore_errors=True)
