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
from typing import Iterator, List, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..config import Config, ConfigError
from .phases import RunPhases


def resolve_data(cfg: Config) -> Tuple[List[str], str]:
    """Dataset prefixes and tokenizer path, with "embedded" mapped to the bundled corpus."""
    from ..data import assets
    paths = cfg.data.paths
    embedded = any(p == "embedded" for p in paths)
    prefixes = [assets.default_data_prefix(cfg.data.cache_dir) if p == "embedded" else p for p in paths]
    tokenizer = cfg.data.tokenizer_model
    if tokenizer == "embedded" or (embedded and len(paths) == 1):
        tokenizer = assets.default_tokenizer_path()
    for prefix in prefixes:
        for ext in (".bin", ".idx"):
            if not os.path.isfile(prefix + ext):
                raise ConfigError(f"config key 'data.paths': dataset file {prefix + ext} not found "
                                  "(build it with tools/preprocess_data.py, or use --data-path embedded)")
    if tokenizer and not os.path.isfile(tokenizer):
        raise ConfigError(f"config key 'data.tokenizer_model': {tokenizer} not found "
                          "(train one with tools/train_tokenizer.py)")
    return prefixes, tokenizer


def check_vocab(tokenizer_path: str, vocab_size: int) -> None:
    from ..data.tokenizer import SentencePieceTokenizer
    vocab = SentencePieceTokenizer(tokenizer_path).vocab_size
    if vocab > vocab_size:
        raise ConfigError(f"config key 'model.vocab_size' = {vocab_size} is smaller than the tokenizer's "
                          f"vocabulary ({vocab}, {tokenizer_path})")


class DataFeed:
    def __init__(self, cfg: Config, state, phases: RunPhases, show_progress: bool = True):
        from ..data.gpt_dataset import build_gpt_datasets
        self.cfg, self.state = cfg, state
        t = cfg.training
        self.global_batch, self.micro_batch = t.global_batch_size, t.micro_batch_size
        self.per_replica = self.global_batch // state.data_size
        prefixes, tokenizer = resolve_data(cfg)
        if tokenizer:
            check_vocab(tokenizer, cfg.model.vocab_size)
        self.tokenizer_path = tokenizer
        n_train = phases.plan.base_steps * self.global_batch
        n_valid = t.eval_iters * self.global_batch
        barrier = dist.barrier if dist.is_available() and dist.is_initialized() else None
        self.train, self.valid, _ = build_gpt_datasets(
            prefixes, cfg.data.weights, cfg.data.split, cfg.model.seq_length, t.seed,
            num_samples=(n_train, n_valid, 0), cache_dir=cfg.data.cache_dir,
            is_builder_rank=state.rank == 0, barrier=barrier, show_progress=show_progress)
        if self.valid is None or len(self.valid) == 0:
            raise ConfigError(f"config key 'data.split' = {cfg.data.split!r} leaves no validation documents")
        self.show_progress = show_progress

    def _micro_batches(self, dataset, first_sample: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        start = first_sample + self.state.data_rank * self.per_replica
        for offset in range(0, self.per_replica, self.micro_batch):
            rows = [np.asarray(dataset[start + offset + i]["tokens"], dtype=np.int64)
                    for i in range(self.micro_batch)]
            tokens = torch.from_numpy(np.stack(rows))
            yield tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()

    def train_micro_batches(self, data_step: int):
        return self._micro_batches(self.train, data_step * self.global_batch)

    def valid_global_batches(self, desc: str = "eval"):
        """Always the same first eval_iters global batches of the validation split."""
        from .metrics import progress
        steps = range(self.cfg.training.eval_iters)
        for i in progress(steps, len(steps), desc, self.show_progress):
            yield self._micro_batches(self.valid, i * self.global_batch)
