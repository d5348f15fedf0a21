"""Which samples each data-parallel rank reads at each step, as a pure function.

Global batch k of a run with global batch size G is samples [k*G, (k+1)*G) of the
(already shuffled) training dataset; data-parallel rank r of D takes the contiguous slice
[r*G/D, (r+1)*G/D) of it and cuts that into micro-batches. Nothing depends on history:
resuming at `consumed_samples` (a multiple of G) continues with exactly the next samples,
and changing D (with G fixed) at a resume neither repeats nor skips a sample.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: index arithmetic must not need it
    import torch


class SamplerError(ValueError):
    """Batch sizes that cannot be split evenly over the data-parallel ranks."""


def _check(micro_batch_size: int, dp_rank: int, dp_size: int, global_batch_size: int) -> None:
    if micro_batch_size < 1 or dp_size < 1 or global_batch_size < 1:
        raise SamplerError("micro batch size, data-parallel size and global batch size must be positive")
    if not 0 <= dp_rank < dp_size:
        raise SamplerError(f"data-parallel rank {dp_rank} is not in [0, {dp_size})")
    if global_batch_size % (micro_batch_size * dp_size):
        raise SamplerError(f"global batch size {global_batch_size} is not a multiple of micro batch "
                           f"size {micro_batch_size} x data-parallel size {dp_size}")


def batch_indices(consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int,
                  total_samples: int, global_batch_size: Optional[int] = None) -> List[List[int]]:
    """This rank's micro-batches (lists of sample indices) for the global batch that starts
    at `consumed_samples`; [] when that global batch would run past `total_samples`."""
    global_batch_size = global_batch_size or micro_batch_size * dp_size
    _check(micro_batch_size, dp_rank, dp_size, global_batch_size)
    if consumed_samples < 0:
        raise SamplerError(f"consumed_samples must not be negative, got {consumed_samples}")
    if consumed_samples + global_batch_size > total_samples:
        return []
    per_rank = global_batch_size // dp_size
    first = consumed_samples + dp_rank * per_rank
    return [list(range(start, start + micro_batch_size))
            for start in range(first, first + per_rank, micro_batch_size)]


class ResumableSampler:
    """Iterates this rank's micro-batches from `consumed_samples` to the end of the data.

    Usable as a `batch_sampler` of a torch DataLoader. `consumed_samples` advances by one
    global batch after the last micro-batch of each global batch has been handed out.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 dp_rank: int, dp_size: int, global_batch_size: Optional[int] = None):
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.global_batch_size = global_batch_size or micro_batch_size * dp_size
        _check(micro_batch_size, dp_rank, dp_size, self.global_batch_size)

    def __iter__(self) -> Iterator[List[int]]:
        while True:
            micro_batches = batch_indices(self.consumed_samples, self.micro_batch_size, self.dp_rank,
                                          self.dp_size, self.total_samples, self.global_batch_size)
            if not micro_batches:
                return
            for i, micro in enumerate(micro_batches):
                if i == len(micro_batches) - 1:
                    self.consumed_samples += self.global_batch_size
                yield micro

    def __len__(self) -> int:
        steps = max(0, (self.total_samples - self.consumed_samples) // self.global_batch_size)
        return steps * (self.global_batch_size // (self.micro_batch_size * self.dp_size))


def micro_batch_tensors(dataset, indices) -> Tuple["torch.Tensor", "torch.Tensor"]:
    """(inputs, labels), int64 [len(indices), seq_length]: tokens[:, :-1] and tokens[:, 1:]."""
    import torch
    tokens = torch.from_numpy(np.stack([np.asarray(dataset[i]["tokens"], dtype=np.int64)
                                        for i in indices]))
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


class _Collate:
    """Picklable collate for DataLoader workers: a list of samples -> (inputs, labels)."""

    def __call__(self, samples):
        import torch
        tokens = torch.from_numpy(np.stack([np.asarray(s["tokens"], dtype=np.int64) for s in samples]))
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def make_data_loader(dataset, sampler: ResumableSampler, num_workers: int = 0,
                     pin_memory: bool = False):
    """A torch DataLoader yielding (inputs, labels) micro-batches in the sampler's order;
    with workers, batches are prefetched in background processes."""
    import torch
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       collate_fn=_Collate(), pin_memory=pin_memory,
                                       persistent_workers=num_workers > 0)
