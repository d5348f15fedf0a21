import pytest
import torch

from megatron_sffn.data.gpt_dataset import build_gpt_datasets
from megatron_sffn.data.sampler import (ResumableSampler, SamplerError, batch_indices,
                                        make_data_loader, micro_batch_tensors)


def consume(total, start, stop, micro, dp_size, gbs):
    """Samples every rank reads for global batches starting in [start, stop)."""
    seen = []
    for consumed in range(start, stop, gbs):
        for rank in range(dp_size):
            for mb in batch_indices(consumed, micro, rank, dp_size, total, gbs):
                seen.extend(mb)
    return seen


@pytest.mark.parametrize("before,after", [((4, 2), (2, 4)), ((8, 1), (1, 2)), ((2, 3), (6, 1))])
def test_resume_with_another_data_parallel_size_never_repeats_or_skips(before, after):
    (dp_a, micro_a), (dp_b, micro_b) = before, after
    gbs, total = 48, 48 * 20 + 17
    resume_at = gbs * 7
    run = consume(total, 0, resume_at, micro_a, dp_a, gbs) + consume(total, resume_at, total, micro_b, dp_b, gbs)
    assert sorted(run) == list(range(48 * 20))          # each used sample once, the tail unused
    assert len(run) == len(set(run))
    # and it is exactly what a run that never stopped reads, step by step
    assert sorted(consume(total, 0, total, micro_a, dp_a, gbs)) == sorted(run)


def test_global_batch_layout_matches_the_training_loops_contiguous_slices():
    gbs, dp, micro = 16, 4, 2
    for step in (0, 3):
        for rank in range(dp):
            got = batch_indices(step * gbs, micro, rank, dp, 10_000, gbs)
            start = step * gbs + rank * gbs // dp
            assert got == [list(range(start, start + 2)), list(range(start + 2, start + 4))]


def test_sampler_is_a_pure_function_of_consumed_samples():
    full = list(ResumableSampler(1000, 0, 4, 1, 2, global_batch_size=32))
    per_step = 32 // (4 * 2)
    for resume_step in (0, 5, 17):
        resumed = list(ResumableSampler(1000, resume_step * 32, 4, 1, 2, global_batch_size=32))
        assert resumed == full[resume_step * per_step:]
    sampler = ResumableSampler(1000, 0, 4, 1, 2, global_batch_size=32)
    assert len(sampler) == len(full) == (1000 // 32) * per_step
    it = iter(sampler)
    for _ in range(per_step * 3):
        next(it)
    assert sampler.consumed_samples == 3 * 32
    # any consumed_samples, not only multiples of the global batch
    assert batch_indices(5, 2, 0, 1, 100) == [[5, 6]]


def test_impossible_batch_layouts_are_rejected():
    with pytest.raises(SamplerError, match="not a multiple"):
        batch_indices(0, 3, 0, 2, 100, global_batch_size=16)
    with pytest.raises(SamplerError, match="rank 2 is not in"):
        ResumableSampler(100, 0, 1, 2, 2)
    assert batch_indices(96, 2, 0, 2, 100, 8) == []           # would run past the data


def test_micro_batches_and_data_loader(tmp_path, small_prefix):
    train, _, _ = build_gpt_datasets(small_prefix, None, "100,0,0", 32, 1, num_samples=(64, 0, 0),
                                     cache_dir=str(tmp_path), show_progress=False)
    inputs, labels = micro_batch_tensors(train, [3, 4, 5])
    assert inputs.dtype == labels.dtype == torch.int64 and inputs.shape == (3, 32)
    assert torch.equal(inputs[:, 1:], labels[:, :-1])
    assert torch.equal(labels[1], torch.from_numpy(train[4]["tokens"][1:]))
    sampler = ResumableSampler(64, 16, 2, 1, 2, global_batch_size=8)
    expected = [micro_batch_tensors(train, mb) for mb in ResumableSampler(64, 16, 2, 1, 2, 8)]
    loaded = list(make_data_loader(train, sampler, num_workers=2))
    assert len(loaded) == len(expected) == 12
    for (x, y), (ex, ey) in zip(loaded, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
