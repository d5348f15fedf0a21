"""Micro-batches for each optimizer step, from the indexed datasets, on every rank.

The global batch of data step s is samples [s * G, (s + 1) * G) of the shuffled training
dataset (G = global batch size); data-parallel rank r of D takes the contiguous slice
[r * G / D, (r + 1) * G / D) and cuts it into micro-batches. Both are pure functions of
(s, r, D), so a resume, at any data-parallel size, continues with exactly the next samples.
Pipeline stages and tensor ranks of one data-parallel replica read the same samples
(only the first and last stage use them).
"""
from __future__ import annotations

import os
from contextlib import nullcontext
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..config import Config, ConfigError
from .phases import RunPhases


def resolve_data(cfg: Config) -> Tuple[List[str], str]:
    """Dataset prefixes and tokenizer path, with "embedded" mapped to the bundled corpus and
    tokenizer. The bundled corpus is tokenized with the bundled tokenizer: another one named
    beside it is refused (it would be recorded as the run's tokenizer, and shipped by an
    export, without ever having tokenized its data), unless it is the same file's bytes."""
    from ..data import assets
    paths = cfg.data.paths
    embedded = any(p == "embedded" for p in paths)
    tokenizer = cfg.data.tokenizer_model
    if tokenizer == "embedded":
        tokenizer = assets.default_tokenizer_path()
    if tokenizer and not os.path.isfile(tokenizer):
        raise ConfigError(f"config key 'data.tokenizer_model': {tokenizer} not found "
                          "(train one with tools/train_tokenizer.py)")
    if embedded and not (tokenizer and _same_file_bytes(tokenizer, assets.default_tokenizer_path())):
        raise ConfigError(f"config key 'data.tokenizer_model' = {cfg.data.tokenizer_model} is not the tokenizer "
                          "the bundled data (data.paths 'embedded') was tokenized with: drop the override (or "
                          "set data.tokenizer_model=embedded), or train on data tokenized with it (--data-path "
                          "PREFIX from tools/preprocess_data.py)")
    for prefix in (p for p in paths if p != "embedded"):  # before the bundled one is built (once per cache)
        for ext in (".bin", ".idx"):
            if not os.path.isfile(prefix + ext):
                raise ConfigError(f"config key 'data.paths': dataset file {prefix + ext} not found "
                                  "(build it with tools/preprocess_data.py, or use --data-path embedded)")
    prefixes = [assets.default_data_prefix(cfg.data.cache_dir) if p == "embedded" else p for p in paths]
    return prefixes, tokenizer


def _same_file_bytes(a: str, b: str) -> bool:
    from ..data.assets import file_sha256
    return os.path.samefile(a, b) or (os.path.getsize(a) == os.path.getsize(b) and file_sha256(a) == file_sha256(b))


def samples_wanted(cfg: Config, phases: RunPhases) -> Tuple[int, int]:
    """(train, valid) samples the run reads: its base steps and its evaluations."""
    t = cfg.training
    return phases.plan.base_steps * t.global_batch_size, t.eval_iters * t.global_batch_size


DATA_ERRORS = (ConfigError, OSError)  # + the data layer's own, added in _data_errors (imported lazily)


def _data_errors():
    from ..data.gpt_dataset import DatasetConfigError
    from ..data.index_cache import CacheError
    from ..data.indexed_dataset import IndexedDatasetError
    from ..data.preflight import DataProblem
    from ..data.tokenizer import TokenizerError
    return DATA_ERRORS + (DataProblem, DatasetConfigError, IndexedDatasetError, CacheError, TokenizerError)


def _attempt(work: Callable):
    """(result, None), or (None, the problem in one line) for errors a user's data causes."""
    try:
        return work(), None
    except _data_errors() as error:
        return None, " ".join(str(error).split())


def check_data_alone(cfg: Config, num_samples: Tuple[int, int]) -> Optional[str]:
    """The first problem with the run's data and tokenizer (one line), or None: the checks of
    data/preflight.py, which need no other rank and write nothing."""
    from ..data.preflight import check_training_data
    resolved, problem = _attempt(lambda: resolve_data(cfg))
    if resolved is not None:
        _, problem = _attempt(lambda: check_training_data(
            resolved[0], cfg.data.split, cfg.model.seq_length, (*num_samples, 0), cfg.model.vocab_size,
            resolved[1], cfg.data.cache_dir))
    return problem


def open_training_data(cfg: Config, rank: int, num_samples: Tuple[int, int], show_progress: bool,
                       watch=None):
    """(train, valid, tokenizer path, dataset prefixes), on every rank, or StartupError on every rank.

    Rank 0 checks the data (data/preflight.py), then builds the sample indices while the other
    ranks wait; then they open them. After each of the three steps all ranks compare notes
    (stop_together), so a problem any rank finds stops every rank with one line from rank 0,
    before the engine is built, instead of a traceback on one rank and a hang on the others.
    """
    from ..data.gpt_dataset import build_gpt_datasets
    from ..data.index_cache import default_cache_dir
    from .agree import stop_together

    resolved, problem = _attempt(lambda: resolve_data(cfg))
    if resolved is not None and rank == 0:
        problem = check_data_alone(cfg, num_samples)
    stop_together(problem)
    prefixes, tokenizer = resolved
    cache_dir = cfg.data.cache_dir or default_cache_dir(prefixes[0])

    def build(is_builder: bool):
        return build_gpt_datasets(prefixes, cfg.data.weights, cfg.data.split, cfg.model.seq_length,
                                  cfg.training.seed, num_samples=(*num_samples, 0), cache_dir=cfg.data.cache_dir,
                                  is_builder_rank=is_builder, barrier=lambda: None,
                                  show_progress=show_progress and is_builder)
    datasets, problem = _attempt(lambda: build(True)) if rank == 0 else (None, None)
    waiting = watch.phase(f"rank 0 to build the sample indices in {cache_dir}") if (watch and rank) else nullcontext()
    with waiting:
        stop_together(problem)
    if rank != 0:
        datasets, problem = _attempt(lambda: build(False))
    stop_together(problem)
    train, valid, _ = datasets
    if valid is None or len(valid) == 0:
        raise ConfigError(f"config key 'data.split' = {cfg.data.split!r} leaves no validation documents")
    return train, valid, tokenizer, prefixes


def _host_copy(view: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of `view`, in pinned (page-locked) memory when there is a GPU: the
    engine's non_blocking copy to the device then really does not block (from pageable memory
    the driver stages it through a bounce buffer, and can wait for the device to reach it)."""
    if not torch.cuda.is_available():
        return view.contiguous()
    out = torch.empty(view.shape, dtype=view.dtype, pin_memory=True)
    out.copy_(view)
    return out


class DataFeed:
    def __init__(self, cfg: Config, state, phases: RunPhases, show_progress: bool = True, watch=None):
        self.cfg, self.state = cfg, state
        t = cfg.training
        self.global_batch, self.micro_batch = t.global_batch_size, t.micro_batch_size
        self.per_replica = self.global_batch // state.data_size
        self.train, self.valid, tokenizer, prefixes = open_training_data(
            cfg, state.rank, samples_wanted(cfg, phases), show_progress, watch)
        # what the run reads, as the banner and the checkpoints record it
        self.tokenizer_path = os.path.abspath(tokenizer) if tokenizer else tokenizer
        self.prefixes = [os.path.abspath(p) for p in prefixes]
        self.show_progress = show_progress

    def _micro_batches(self, dataset, first_sample: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        start = first_sample + self.state.data_rank * self.per_replica
        for offset in range(0, self.per_replica, self.micro_batch):
            rows = [np.asarray(dataset[start + offset + i]["tokens"], dtype=np.int64)
                    for i in range(self.micro_batch)]
            tokens = torch.from_numpy(np.stack(rows))
            yield _host_copy(tokens[:, :-1]), _host_copy(tokens[:, 1:])

    def train_micro_batches(self, data_step: int):
        return self._micro_batches(self.train, data_step * self.global_batch)

    def valid_global_batches(self, desc: str = "eval"):
        """Always the same first eval_iters global batches of the validation split."""
        from .metrics import progress
        steps = range(self.cfg.training.eval_iters)
        for i in progress(steps, len(steps), desc, self.show_progress):
            yield self._micro_batches(self.valid, i * self.global_batch)
