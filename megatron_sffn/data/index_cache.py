"""On-disk cache of index arrays (.npy), built once by one rank and memory-mapped by all.

A cache entry is a set of .npy files plus a description .json, all named by the hash of
that description (which records every input that shapes the arrays). Files are written to
temporary names and renamed; the description is renamed last and marks the entry
complete, so a reader never sees half an entry, and two jobs building the same entry at
once simply both produce the same files.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict

import numpy as np

CACHE_FORMAT = 1


class CacheError(RuntimeError):
    """The cache folder is not writable, or an entry never appeared."""


def describe(fields: dict) -> tuple:
    """(description text, hash) of the inputs of an index build."""
    text = json.dumps({"format": CACHE_FORMAT, **fields}, indent=2, sort_keys=True)
    return text, hashlib.md5(text.encode("utf-8")).hexdigest()


def default_cache_dir(prefix: str) -> str:
    """Beside the data, as Megatron-LM does: <data folder>/cache/sample_indices."""
    return os.path.join(os.path.dirname(os.path.abspath(prefix)), "cache", "sample_indices")


class CacheEntry:
    def __init__(self, cache_dir: str, stem: str, fields: dict, arrays: tuple):
        self.cache_dir = cache_dir
        self.description, digest = describe(fields)
        self.base = os.path.join(cache_dir, f"{digest}-{stem}")
        self.arrays = arrays

    def path(self, name: str) -> str:
        return f"{self.base}-{name}.npy"

    @property
    def marker(self) -> str:
        return f"{self.base}-description.json"

    def exists(self) -> bool:
        return os.path.isfile(self.marker) and all(os.path.isfile(self.path(a)) for a in self.arrays)

    def save(self, arrays: Dict[str, np.ndarray]) -> None:
        try:
            os.makedirs(self.cache_dir, exist_ok=True)
        except OSError as error:
            raise CacheError(f"cannot create the index cache folder {self.cache_dir}: {error} "
                             "(set data.cache_dir / cache_dir to a writable shared folder)") from error
        if not os.access(self.cache_dir, os.W_OK):
            raise CacheError(f"index cache folder {self.cache_dir} is not writable "
                             "(set data.cache_dir / cache_dir to a writable shared folder)")
        tag = f".tmp-{os.getpid()}"
        for name in self.arrays:
            tmp = self.path(name) + tag
            with open(tmp, "wb") as out:
                np.save(out, arrays[name], allow_pickle=False)
            os.replace(tmp, self.path(name))
        with open(self.marker + tag, "w") as out:
            out.write(self.description)
        os.replace(self.marker + tag, self.marker)

    def load(self) -> Dict[str, np.ndarray]:
        return {name: np.load(self.path(name), mmap_mode="r", allow_pickle=False)
                for name in self.arrays}

    def wait(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """For ranks that do not build: wait until the builder has published the entry."""
        deadline = time.monotonic() + timeout_s
        while not self.exists():
            if time.monotonic() > deadline:
                raise CacheError(f"index cache entry {self.marker} did not appear within "
                                 f"{timeout_s:.0f} s (is the builder rank running, and is "
                                 f"{self.cache_dir} shared between ranks?)")
            time.sleep(poll_s)

