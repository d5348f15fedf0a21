"""The index arrays that turn an indexed dataset into fixed-length GPT samples.

Built exactly as Megatron-LM builds them (same arrays, same random stream), so a run that
moves between Megatron-LM and this code sees the same samples in the same order:

* document index: the documents of a split, repeated once per epoch and shuffled
  (the last epoch shuffled on its own when it is used for less than 80%);
* sample index: for sample i, where token i*seq_length of the concatenated document stream
  lies, as (position in the document index, offset in that document); sample i is tokens
  [i*seq_length, i*seq_length + seq_length + 1) of that stream, so it runs across
  document boundaries and shares its last token with the next sample's first;
* shuffle index: a permutation of the samples (the partial last epoch again on its own);
* blending indices: which dataset, and which of its samples, each blended sample is.

All are pure functions of their arguments. The sample index is computed in chunks with a
vectorised search, so memory stays bounded for corpora of billions of documents.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import numpy as np

ADD_EXTRA_TOKEN = 1                  # samples have seq_length + 1 tokens
SEPARATE_FINAL_EPOCH_THRESHOLD = 0.80


def num_epochs_for(tokens_per_epoch: int, num_samples: Optional[int], seq_length: int) -> int:
    """Fewest epochs whose tokens cover num_samples samples of seq_length + 1 tokens."""
    if num_samples is None:
        return 1
    needed = num_samples * seq_length + ADD_EXTRA_TOKEN
    return max(1, -(-needed // tokens_per_epoch))


def samples_in(num_epochs: int, tokens_per_epoch: int, seq_length: int) -> int:
    return (num_epochs * tokens_per_epoch - ADD_EXTRA_TOKEN) // seq_length


def separate_final_epoch(num_epochs: int, tokens_per_epoch: int, seq_length: int,
                         num_samples: Optional[int]) -> bool:
    """Whether the last epoch is shuffled apart: when less than 80% of it is needed, so the
    samples actually used are not drawn mostly from one part of the corpus."""
    if num_epochs == 1 or num_samples is None:
        return False
    before_final = samples_in(num_epochs - 1, tokens_per_epoch, seq_length)
    from_final = num_samples - before_final
    per_epoch = (tokens_per_epoch - ADD_EXTRA_TOKEN) // seq_length
    return from_final < int(SEPARATE_FINAL_EPOCH_THRESHOLD * per_epoch)


def build_document_index(documents: np.ndarray, num_epochs: int, rng: np.random.RandomState,
                         separate_final: bool) -> np.ndarray:
    """int32 [num_epochs * len(documents)]: the documents of every epoch, shuffled."""
    if separate_final and num_epochs > 1:
        first = build_document_index(documents, num_epochs - 1, rng, False)
        last = build_document_index(documents, 1, rng, False)
        return np.concatenate((first, last))
    index = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)
    rng.shuffle(index)
    return index


def sample_index_dtype(document_index: np.ndarray, sizes: np.ndarray) -> np.dtype:
    largest = max(len(document_index), int(sizes.max()) if len(sizes) else 0)
    return np.dtype(np.int32) if largest <= np.iinfo(np.int32).max else np.dtype(np.int64)


def build_sample_index(sizes: np.ndarray, document_index: np.ndarray, seq_length: int,
                       num_epochs: int, tokens_per_epoch: int, chunk: int = 1 << 22,
                       progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """[num_samples + 1, 2]: (document-index position, offset) where each sample starts.

    `progress(n)` is called with the number of documents scanned after each chunk.
    """
    if seq_length < 1:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    num_samples = samples_in(num_epochs, tokens_per_epoch, seq_length)
    if num_samples < 1:
        raise ValueError(f"{tokens_per_epoch * num_epochs} tokens cannot fill one sample of "
                         f"{seq_length + ADD_EXTRA_TOKEN} tokens")
    out = np.empty((num_samples + 1, 2), dtype=sample_index_dtype(document_index, sizes))
    starts = np.arange(num_samples + 1, dtype=np.int64) * seq_length   # sorted token positions
    stream_start = 0          # token position of the first token of the current chunk
    filled = 0                # samples whose start has been located
    for first_doc in range(0, len(document_index), chunk):
        lengths = sizes[document_index[first_doc:first_doc + chunk]].astype(np.int64)
        ends = np.cumsum(lengths)
        ends += stream_start
        stream_end = int(ends[-1]) if len(ends) else stream_start
        stop = int(np.searchsorted(starts, stream_end, side="left"))
        if stop > filled:
            targets = starts[filled:stop]
            local = np.searchsorted(ends, targets, side="right")
            out[filled:stop, 0] = local + first_doc
            out[filled:stop, 1] = targets - (ends[local] - lengths[local])
            filled = stop
        stream_start = stream_end
        if progress is not None:
            progress(len(lengths))
        if filled > num_samples:
            break
    if filled != num_samples + 1:
        raise AssertionError(f"sample index incomplete: {filled} of {num_samples + 1} starts")
    return out


def build_shuffle_index(num_samples: int, total_size: int, rng: np.random.RandomState) -> np.ndarray:
    """A permutation of [0, num_samples), then one of [num_samples, total_size)."""
    dtype = np.uint32 if total_size < np.iinfo(np.uint32).max - 1 else np.int64
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_size:
        return first
    last = np.arange(num_samples, total_size, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def build_gpt_indices(sizes: np.ndarray, documents: np.ndarray, num_samples: Optional[int],
                      seq_length: int, seed: int,
                      progress: Optional[Callable[[int], None]] = None
                      ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(document index, sample index, shuffle index) for one split of one dataset."""
    tokens_per_epoch = int(sizes[documents].sum(dtype=np.int64))
    num_epochs = num_epochs_for(tokens_per_epoch, num_samples, seq_length)
    separate = separate_final_epoch(num_epochs, tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed)
    document_index = build_document_index(documents, num_epochs, rng, separate)
    sample_index = build_sample_index(sizes, document_index, seq_length, num_epochs,
                                      tokens_per_epoch, progress=progress)
    total = sample_index.shape[0] - 1
    first = samples_in(num_epochs - 1, tokens_per_epoch, seq_length) if separate else total
    shuffle_index = build_shuffle_index(first, total, rng)
    return document_index, sample_index, shuffle_index


def normalize_weights(weights: Sequence[float]) -> list:
    w = np.array(weights, dtype=np.float64)
    return (w / np.sum(w)).tolist()


def build_blending_indices(weights: Sequence[float], size: int,
                           progress: Optional[Callable[[int], None]] = None
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """(dataset index int16, sample-within-dataset index int64) for `size` blended samples.

    Sample t goes to the dataset furthest behind its share (largest weight * t - count, the
    first one on ties), as in Megatron-LM, so after any number of samples every dataset's
    count is within one sample of its weight's share.
    """
    w = [float(x) for x in normalize_weights(weights)]
    k = len(w)
    dataset_index = np.empty(size, dtype=np.int16)
    sample_index = np.empty(size, dtype=np.int64)
    counts = [0] * k
    others = range(1, k)
    step = 1 << 20
    for block in range(0, size, step):
        chosen_block = [0] * min(step, size - block)
        ordinal_block = [0] * len(chosen_block)
        for j in range(len(chosen_block)):
            t = block + j
            td = float(t) if t > 1 else 1.0
            best, best_error = 0, w[0] * td - counts[0]
            for i in others:
                error = w[i] * td - counts[i]
                if error > best_error:
                    best, best_error = i, error
            chosen_block[j] = best
            ordinal_block[j] = counts[best]
            counts[best] += 1
        dataset_index[block:block + len(chosen_block)] = chosen_block
        sample_index[block:block + len(chosen_block)] = ordinal_block
        if progress is not None:
            progress(len(chosen_block))
    return dataset_index, sample_index
