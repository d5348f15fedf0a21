"""Byte compatibility with Megatron-LM (megatron-core from the package index), both ways,
and identical GPT / blended samples for the same inputs."""
import warnings

import numpy as np
import pytest

from megatron_sffn.data.gpt_dataset import build_gpt_datasets
from megatron_sffn.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter

from .conftest import megatron_core_available

pytestmark = pytest.mark.skipif(not megatron_core_available(),
                                reason="megatron-core is not installed (pip install megatron-core)")


def _mcore():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets import indexed_dataset
    return indexed_dataset


def test_megatron_reads_our_dataset(small_prefix):
    ours = IndexedDataset(small_prefix)
    theirs = _mcore().IndexedDataset(small_prefix)
    assert len(theirs) == len(ours)
    assert theirs.index.dtype == np.uint16
    assert np.array_equal(theirs.sequence_lengths, ours.sizes)
    assert np.array_equal(theirs.document_indices, ours.document_indices)
    for i in range(len(ours)):
        assert np.array_equal(theirs[i], ours[i])


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_we_read_megatrons_dataset_and_write_the_same_bytes(tmp_path, dtype):
    import torch
    mcore = _mcore()
    rng = np.random.default_rng(7)
    docs = [rng.integers(0, 30000, size=rng.integers(1, 200)) for _ in range(64)]
    prefix = str(tmp_path / "mega")
    builder = mcore.IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in docs:
        builder.add_item(torch.from_numpy(doc.astype(np.int64)))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    ours = IndexedDataset(prefix, verify=True)
    assert ours.dtype == np.dtype(dtype) and len(ours) == len(docs)
    assert all(np.array_equal(ours[i], d) for i, d in enumerate(docs))
    with IndexedDatasetWriter(str(tmp_path / "ours"), dtype) as writer:
        for doc in docs:
            writer.add_document(doc)
    for ext in (".bin", ".idx"):
        assert open(prefix + ext, "rb").read() == open(str(tmp_path / "ours") + ext, "rb").read()


class _Tokenizer:
    """What Megatron's GPTDatasetConfig needs of a tokenizer."""
    eod = eos = 2
    pad = 3
    vocab_size = 8000
    unique_identifiers = {"class": "test-tokenizer"}


@pytest.fixture(scope="module")
def process_group():
    """megatron-core's BlendedDataset asks torch.distributed for the rank: a 1-process group."""
    import socket
    import torch.distributed as dist
    created = False
    if not dist.is_initialized():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        created = True
    yield
    if created:
        dist.destroy_process_group()


def _megatron_datasets(prefixes, weights, sizes, seq, seed, split, cache):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
        from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
        config = GPTDatasetConfig(random_seed=seed, sequence_length=seq, blend=(prefixes, weights),
                                  split=split, path_to_cache=cache, tokenizer=_Tokenizer(),
                                  reset_position_ids=False, reset_attention_mask=False,
                                  eod_mask_loss=False)
        return BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()


@pytest.mark.parametrize("case", [
    dict(weights=None, sizes=[3000, 40, 5], seq=64, split="969,30,1"),      # several epochs
    dict(weights=None, sizes=[100, 20, None], seq=128, split="80,20,0"),    # < 1 epoch, no test
    dict(weights=None, sizes=[1900, 10, 5], seq=200, split="98,1,1"),       # separate final epoch
    dict(weights=[0.3, 0.7], sizes=[2000, 50, 10], seq=64, split="969,30,1"),
    dict(weights=[1.0], sizes=[500, 20, 5], seq=32, split="90,5,5"),
])
def test_same_indices_and_samples_as_megatron(tmp_path, small_prefix, process_group, case):
    prefixes = [small_prefix] * (len(case["weights"]) if case["weights"] else 1)
    theirs = _megatron_datasets(prefixes, case["weights"], case["sizes"], case["seq"], 1234,
                                case["split"], str(tmp_path / "mcache"))
    ours = build_gpt_datasets(prefixes, case["weights"], case["split"], case["seq"], 1234,
                              num_samples=case["sizes"], cache_dir=str(tmp_path / "ours"),
                              show_progress=False)
    for mine, other in zip(ours, theirs):
        assert (mine is None) == (other is None)
        if mine is None:
            continue
        assert len(mine) == len(other)
        if hasattr(other, "shuffle_index"):
            assert np.array_equal(mine.document_index, other.document_index)
            assert np.array_equal(mine.sample_index, other.sample_index)
            assert np.array_equal(mine.shuffle_index, other.shuffle_index)
        else:
            assert np.array_equal(mine.dataset_index, other.dataset_index)
            assert np.array_equal(mine.dataset_sample_index, other.dataset_sample_index)
        for i in range(0, len(mine), max(1, len(mine) // 100)):
            tokens = mine[i]["tokens"]
            assert np.array_equal(tokens[:-1], other[i]["tokens"].numpy())
            assert np.array_equal(tokens[1:], other[i]["labels"].numpy())
