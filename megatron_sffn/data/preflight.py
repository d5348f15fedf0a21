"""Checks of the training data that run before any index is built or any engine exists.

Each finds one way a dataset cannot train this model and says so in one line that names
the file and the fix, instead of a traceback from inside a rank minutes later (or a CUDA
device assert for a token id past the embedding). Nothing here writes to disk.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from .gpt_dataset import SPLITS, split_document_ranges
from .index_cache import default_cache_dir
from .indexed_dataset import IndexedDataset, IndexedDatasetError, data_file_path
from .tokenizer import SentencePieceTokenizer, TokenizerError

TOKEN_SCAN_BYTES = 64 << 20   # token ids read per dataset: all of a small one, 64 evenly spread MiB of a large one
REBUILD = "rebuild it with tools/preprocess_data.py (tools/inspect_data.py PREFIX checks a pair)"


class DataProblem(ValueError):
    """The data cannot train this run; the message names the file and the fix."""


def check_training_data(prefixes: Sequence[str], split: str, seq_length: int,
                        num_samples: Sequence[Optional[int]], vocab_size: int,
                        tokenizer_path: Optional[str], cache_dir: Optional[str]) -> None:
    """Raise DataProblem for the first problem found. num_samples[i] > 0 means split i must give samples."""
    if tokenizer_path:
        check_tokenizer(tokenizer_path, vocab_size)
    for prefix in prefixes:
        dataset = open_dataset(prefix)
        check_splits(dataset, split, seq_length, num_samples)
        check_token_ids(dataset, vocab_size)
    check_cache_dir(cache_dir or default_cache_dir(prefixes[0]))


def open_dataset(prefix: str) -> IndexedDataset:
    try:
        return IndexedDataset(prefix)
    except IndexedDatasetError as error:
        raise DataProblem(f"{error}; {REBUILD.replace('PREFIX', prefix)}") from None


def check_tokenizer(path: str, vocab_size: int) -> None:
    try:
        vocab = SentencePieceTokenizer(path).vocab_size
    except TokenizerError as error:
        text = " ".join(str(error).split())
        raise DataProblem(f"config key 'data.tokenizer_model': {text}; point it at the .model file "
                          "tools/train_tokenizer.py wrote (or 'embedded')") from None
    if vocab > vocab_size:
        raise DataProblem(f"config key 'model.vocab_size' = {vocab_size} is smaller than the vocabulary of "
                          f"the tokenizer {path} ({vocab}); set --override model.vocab_size={vocab} or more "
                          "(rounded up to a multiple of the tensor-parallel size)")


def check_splits(dataset: IndexedDataset, split: str, seq_length: int,
                 num_samples: Sequence[Optional[int]]) -> None:
    """Every split that samples are asked of has documents, and tokens for at least one sample
    (a split of weight 0 is the user's choice: build_gpt_datasets gives None for it)."""
    ranges = split_document_ranges(split, len(dataset))
    for i, wanted in enumerate(num_samples):
        if not wanted or ranges[i] is None:
            continue
        name = SPLITS[i]
        fix = (f"give the {name} split a larger share of data.split (e.g. --override data.split="
               f"{_larger_share(i)}) or use a larger dataset")
        if ranges[i][1] <= ranges[i][0]:
            raise DataProblem(f"config key 'data.split' = {split!r} gives the {name} split of "
                              f"{data_file_path(dataset.prefix)} no documents (it has {len(dataset)}); {fix}")
        begin, end = ranges[i]
        tokens = int(dataset.sizes[begin:end].sum(dtype=np.int64))
        if tokens <= seq_length:
            raise DataProblem(f"the {name} split of {data_file_path(dataset.prefix)} (documents {begin}..{end}) "
                              f"has {tokens} tokens, too few for one sample of {seq_length + 1}; {fix}, "
                              "or lower model.seq_length")


def _larger_share(split_index: int) -> str:
    return ["98,2,0", "90,10,0", "90,5,5"][split_index]


def check_token_ids(dataset: IndexedDataset, vocab_size: int) -> None:
    """Token ids must index the embedding: a scan of up to TOKEN_SCAN_BYTES spread over the .bin
    (a dataset tokenized with another tokenizer has out-of-range ids everywhere)."""
    path = data_file_path(dataset.prefix)
    if dataset.num_tokens == 0:
        return
    low, high = _token_range(path, dataset.dtype)
    if high >= vocab_size or low < 0:
        bad = high if high >= vocab_size else low
        raise DataProblem(f"{path} holds token id {bad}, outside the model's vocabulary (model.vocab_size = "
                          f"{vocab_size}): it was tokenized with another tokenizer; re-tokenize it with this "
                          "run's data.tokenizer_model (tools/preprocess_data.py) or train with the vocabulary "
                          "it was made for")


def _token_range(path: str, dtype: np.dtype):
    tokens = np.memmap(path, dtype=dtype, mode="r")
    per_chunk = TOKEN_SCAN_BYTES // 64 // dtype.itemsize
    if tokens.size <= 64 * per_chunk:
        return int(tokens.min()), int(tokens.max())
    starts = np.linspace(0, tokens.size - per_chunk, 64).astype(np.int64)
    lows, highs = zip(*((int(c.min()), int(c.max())) for c in (tokens[s:s + per_chunk] for s in starts)))
    return min(lows), max(highs)


def check_cache_dir(cache_dir: str) -> None:
    """The builder rank will create the sample-index cache here: the nearest existing folder
    must be writable (checked without creating anything)."""
    existing = os.path.abspath(cache_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise DataProblem(f"cannot create the sample-index cache folder {cache_dir}: {existing} is not a "
                          "writable folder; set --override data.cache_dir=DIR to a writable folder every rank sees")
