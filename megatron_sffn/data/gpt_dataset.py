"""GPT training samples (seq_length + 1 tokens) from one or more indexed datasets.

`build_gpt_datasets` splits each dataset's documents into train / valid / test ranges
(Megatron-style split string, e.g. "969,30,1"), builds for each split the document,
sample and shuffle indices (repeating the corpus over as many epochs as the requested
number of samples needs), blends several datasets by weight, and caches every index as
.npy files built by one rank and memory-mapped by all. Samples and their order are the
ones Megatron-LM's GPTDataset / BlendedDataset produce for the same inputs.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from .index_cache import CacheEntry, CacheError, default_cache_dir
from .indexed_dataset import IndexedDataset, index_file_path
from .sample_index import (build_blending_indices, build_gpt_indices, normalize_weights,
                           num_epochs_for, samples_in)

SPLITS = ("train", "valid", "test")
BLEND_SURPLUS = 0.005      # Megatron's mid_level_dataset_surplus: each dataset builds 0.5% extra


class DatasetConfigError(ValueError):
    """Impossible dataset settings (split, weights, sizes); the message says which."""


# ---------------------------------------------------------------------------------------
# Splits
# ---------------------------------------------------------------------------------------
def parse_split(split: Union[str, Sequence[float]]) -> List[float]:
    """"969,30,1" -> [0.969, 0.03, 0.001] (missing parts are 0)."""
    if isinstance(split, str):
        parts = [float(x) for x in re.findall(r"[.0-9]+", split)]
    else:
        parts = [float(x) for x in split]
    if not parts or len(parts) > 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise DatasetConfigError(f"split {split!r}: expected up to three non-negative weights "
                                 "for train, valid, test, e.g. \"969,30,1\"")
    parts += [0.0] * (3 - len(parts))
    return normalize_weights(parts)


def split_document_ranges(split: Union[str, Sequence[float]], num_documents: int
                          ) -> List[Optional[Tuple[int, int]]]:
    """Contiguous document ranges per split (None where the split's weight is 0)."""
    fractions = parse_split(split)
    bounds = [0.0]
    for f in fractions:
        bounds.append(bounds[-1] + f)
    ranges: List[Optional[Tuple[int, int]]] = []
    for i in range(3):
        if fractions[i] == 0:
            ranges.append(None)
            continue
        begin = int(round(bounds[i] * float(num_documents)))
        end = int(round(bounds[i + 1] * float(num_documents)))
        ranges.append((begin, end))
    return ranges


def _fingerprint(prefix: str) -> str:
    """Cheap identity of an .idx file that every node computes the same (no mtimes)."""
    path = index_file_path(prefix)
    size = os.path.getsize(path)
    digest = hashlib.md5(str(size).encode())
    with open(path, "rb") as stream:
        digest.update(stream.read(1 << 16))
        stream.seek(max(0, size - (1 << 16)))
        digest.update(stream.read(1 << 16))
    return digest.hexdigest()


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, unit_scale=True, file=sys.stderr,
                dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------
class GPTDataset:
    """Samples of one split of one indexed dataset: item i is {"tokens": int64[seq_length + 1]}."""

    ARRAYS = ("document_index", "sample_index", "shuffle_index")

    def __init__(self, indexed: IndexedDataset, documents: Tuple[int, int], num_samples: Optional[int],
                 seq_length: int, seed: int, split: str, cache_dir: str):
        self.indexed = indexed
        self.documents = documents
        self.seq_length, self.seed, self.split = seq_length, seed, split
        self.requested_samples = num_samples
        begin, end = documents
        self.tokens_per_epoch = int(indexed.sizes[begin:end].sum(dtype=np.int64))
        if self.tokens_per_epoch <= seq_length:
            raise DatasetConfigError(
                f"the {split} split of {indexed.prefix} (documents {begin}..{end}) has "
                f"{self.tokens_per_epoch} tokens, too few for one sample of {seq_length + 1}")
        self.num_epochs = num_epochs_for(self.tokens_per_epoch, num_samples, seq_length)
        self._length = samples_in(self.num_epochs, self.tokens_per_epoch, seq_length)
        fields = {"class": "GPTDataset", "prefix": os.path.abspath(indexed.prefix),
                  "index": _fingerprint(indexed.prefix), "documents": [begin, end],
                  "num_samples": num_samples, "seq_length": seq_length, "seed": seed, "split": split}
        self.entry = CacheEntry(cache_dir, f"GPTDataset-{split}", fields, self.ARRAYS)
        self._arrays = None

    def ensure_built(self, show_progress: bool = True) -> None:
        """Build and cache the indices unless the cache already has them (builder rank)."""
        if self.entry.exists():
            return
        begin, end = self.documents
        documents = np.arange(begin, end, dtype=np.int32)
        total_docs = (end - begin) * self.num_epochs
        with _progress(total_docs, f"sample index {self.split} {os.path.basename(self.indexed.prefix)}",
                       show_progress) as bar:
            arrays = build_gpt_indices(self.indexed.sizes, documents, self.requested_samples,
                                       self.seq_length, self.seed, progress=bar.update)
        self.entry.save(dict(zip(self.ARRAYS, arrays)))

    def open(self, wait_timeout_s: Optional[float] = None) -> "GPTDataset":
        if not self.entry.exists():
            if wait_timeout_s is None:
                raise CacheError(f"sample index {self.entry.marker} is missing: the builder rank "
                                 "has not built it (or the cache folder is not shared)")
            self.entry.wait(wait_timeout_s)
        self._arrays = self.entry.load()
        self.document_index = self._arrays["document_index"]
        self.sample_index = self._arrays["sample_index"]
        self.shuffle_index = self._arrays["shuffle_index"]
        if self.sample_index.shape[0] - 1 != self._length:
            raise CacheError(f"{self.entry.path('sample_index')} has {self.sample_index.shape[0] - 1} "
                             f"samples, expected {self._length}: delete the cache entry")
        return self

    def __len__(self) -> int:
        return self._length

    def tokens(self, index: int) -> np.ndarray:
        if self._arrays is None:
            raise RuntimeError("dataset not opened: call build_gpt_datasets")
        if not 0 <= index < self._length:
            raise IndexError(f"sample {index} out of range ({self._length} samples)")
        sample = int(self.shuffle_index[index])
        doc_begin, offset_begin = (int(x) for x in self.sample_index[sample])
        doc_end, offset_end = (int(x) for x in self.sample_index[sample + 1])
        if doc_begin == doc_end:
            part = self.indexed.get(int(self.document_index[doc_begin]), offset_begin,
                                    offset_end - offset_begin + 1)
            return part.astype(np.int64)
        parts = [self.indexed.get(int(self.document_index[doc_begin]), offset_begin)]
        for position in range(doc_begin + 1, doc_end):
            parts.append(self.indexed.get(int(self.document_index[position])))
        parts.append(self.indexed.get(int(self.document_index[doc_end]), 0, offset_end + 1))
        return np.concatenate(parts).astype(np.int64)

    def __getitem__(self, index: int) -> dict:
        return {"tokens": self.tokens(int(index))}


class BlendedDataset:
    """Samples drawn from several datasets in proportion to their weights."""

    ARRAYS = ("dataset_index", "dataset_sample_index")

    def __init__(self, datasets: Sequence[GPTDataset], weights: Sequence[float], size: int,
                 split: str, cache_dir: str):
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights)
        self.size, self.split = size, split
        fields = {"class": "BlendedDataset", "datasets": [d.entry.base for d in self.datasets],
                  "weights": self.weights, "size": size, "split": split}
        self.entry = CacheEntry(cache_dir, f"BlendedDataset-{split}", fields, self.ARRAYS)
        self._arrays = None

    def ensure_built(self, show_progress: bool = True) -> None:
        if self.entry.exists():
            return
        with _progress(self.size, f"blend {self.split}", show_progress) as bar:
            dataset_index, sample_index = build_blending_indices(self.weights, self.size, bar.update)
        counts = np.bincount(dataset_index, minlength=len(self.datasets))
        for i, (count, dataset) in enumerate(zip(counts, self.datasets)):
            if count > len(dataset):
                raise DatasetConfigError(f"the {self.split} blend needs {count} samples of "
                                         f"{dataset.indexed.prefix}, which has {len(dataset)}")
        self.entry.save({"dataset_index": dataset_index, "dataset_sample_index": sample_index})

    def open(self, wait_timeout_s: Optional[float] = None) -> "BlendedDataset":
        for dataset in self.datasets:
            dataset.open(wait_timeout_s)
        if not self.entry.exists():
            if wait_timeout_s is None:
                raise CacheError(f"blend index {self.entry.marker} is missing: the builder rank "
                                 "has not built it (or the cache folder is not shared)")
            self.entry.wait(wait_timeout_s)
        self._arrays = self.entry.load()
        self.dataset_index = self._arrays["dataset_index"]
        self.dataset_sample_index = self._arrays["dataset_sample_index"]
        return self

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.size:
            raise IndexError(f"sample {index} out of range ({self.size} samples)")
        which = int(self.dataset_index[index])
        return {"tokens": self.datasets[which].tokens(int(self.dataset_sample_index[index])),
                "dataset_id": which}


# ---------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------
def build_gpt_datasets(prefixes: Union[str, Sequence[str]], weights: Optional[Sequence[float]],
                       split: Union[str, Sequence[float]], seq_length: int, seed: int,
                       num_samples: Sequence[Optional[int]] = (None, None, None),
                       cache_dir: Optional[str] = None, is_builder_rank: bool = True,
                       barrier: Optional[Callable[[], None]] = None, show_progress: bool = True,
                       wait_timeout_s: float = 3600.0):
    """(train, valid, test) datasets; None for a split with weight 0 (or no documents).

    num_samples[i] is the number of samples split i must provide (the corpus is repeated
    over epochs as needed); None or 0 means one epoch. With a barrier, the builder rank
    builds the indices, everybody waits at the barrier, then all ranks memory-map them;
    without one, ranks that do not build wait for the cache files to appear.
    """
    prefixes = [prefixes] if isinstance(prefixes, str) else list(prefixes)
    if not prefixes:
        raise DatasetConfigError("no dataset prefixes given")
    if seq_length < 1:
        raise DatasetConfigError(f"seq_length must be positive, got {seq_length}")
    num_samples = list(num_samples) + [None] * (3 - len(num_samples))
    if any(n is not None and n < 0 for n in num_samples):
        raise DatasetConfigError(f"num_samples {num_samples} must not be negative")
    if weights is not None:
        if len(weights) != len(prefixes):
            raise DatasetConfigError(f"{len(weights)} weights for {len(prefixes)} dataset prefixes")
        if any(w <= 0 for w in weights):
            raise DatasetConfigError(f"blend weights must be positive, got {list(weights)}")
    parse_split(split)
    indexed = [IndexedDataset(p) for p in prefixes]
    cache = cache_dir or default_cache_dir(prefixes[0])
    show = show_progress and is_builder_rank

    if len(prefixes) == 1 and weights is None:
        tops = _single(indexed[0], split, num_samples, seq_length, seed, cache)
    else:
        if weights is None:   # blend by size: each corpus contributes in proportion to its tokens
            weights = [d.num_tokens for d in indexed]
        tops = _blended(indexed, weights, split, num_samples, seq_length, seed, cache)

    if is_builder_rank:
        for top in tops:
            if top is None:
                continue
            for part in getattr(top, "datasets", [top]):
                part.ensure_built(show)
            top.ensure_built(show)
    if barrier is not None:
        barrier()
    timeout = None if (barrier is not None or is_builder_rank) else wait_timeout_s
    return tuple(top.open(timeout) if top is not None else None for top in tops)


def _documents_for(indexed: IndexedDataset, split, i: int, wanted: Optional[int], seq_length: int):
    ranges = split_document_ranges(split, len(indexed))
    if ranges[i] is None:
        return None
    begin, end = ranges[i]
    if end <= begin:
        if wanted:
            raise DatasetConfigError(
                f"split {split!r} gives the {SPLITS[i]} split of {indexed.prefix} no documents "
                f"(it has {len(indexed)}), but {wanted} {SPLITS[i]} samples were requested")
        return None
    if not wanted and int(indexed.sizes[begin:end].sum(dtype=np.int64)) <= seq_length:
        return None     # too small for one sample, and no sample was asked of it
    return begin, end


def _single(indexed, split, num_samples, seq_length, seed, cache):
    tops = []
    for i, name in enumerate(SPLITS):
        wanted = num_samples[i] or None
        documents = _documents_for(indexed, split, i, wanted, seq_length)
        tops.append(None if documents is None else
                    GPTDataset(indexed, documents, wanted, seq_length, seed, name, cache))
    return tops


def _blended(indexed, weights, split, num_samples, seq_length, seed, cache):
    weights = normalize_weights(weights)
    tops = []
    for i, name in enumerate(SPLITS):
        wanted = num_samples[i] or None
        members, member_weights = [], []
        for dataset, weight in zip(indexed, weights):
            documents = _documents_for(dataset, split, i, wanted, seq_length)
            if documents is None:
                continue
            buffer = None if wanted is None else int(math.ceil(math.ceil(wanted * weight) * (1 + BLEND_SURPLUS)))
            members.append(GPTDataset(dataset, documents, buffer, seq_length, seed, name, cache))
            member_weights.append(weight)
        if not members:
            tops.append(None)
            continue
        member_weights = normalize_weights(member_weights)
        if wanted is None:   # one pass: as many samples as no member runs out of
            size = min(int((len(m) - 1) / w) for m, w in zip(members, member_weights))
        else:
            size = sum(int(math.ceil(wanted * w)) for w in member_weights)
        tops.append(BlendedDataset(members, member_weights, max(size, 0), name, cache))
    return tops
