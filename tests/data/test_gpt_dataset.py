import os
import threading
import time

import numpy as np
import pytest

from megatron_sffn.data import gpt_dataset as gd
from megatron_sffn.data import index_cache
from megatron_sffn.data.gpt_dataset import DatasetConfigError, build_gpt_datasets, split_document_ranges
from megatron_sffn.data.index_cache import CacheError
from megatron_sffn.data.indexed_dataset import IndexedDataset
from megatron_sffn.data.preprocess import PreprocessConfig, preprocess

from .conftest import write_jsonl


@pytest.fixture(scope="module")
def two_prefixes(tmp_path_factory, corpus_records, tokenizer_path):
    """Two distinct corpora: Bible chapters and Jargon File entries."""
    root = tmp_path_factory.mktemp("two")
    prefixes = []
    for source in ("kjv", "jargon"):
        data = write_jsonl(root / f"{source}.jsonl", [r for r in corpus_records if r["source"] == source][:400])
        preprocess(PreprocessConfig(inputs=[data], json_keys=["text"], tokenizer_model=tokenizer_path,
                                    output_prefix=str(root / source), workers=0, append_eod=True,
                                    show_progress=False))
        prefixes.append(str(root / source) + "_text_document")
    return prefixes


def test_samples_have_seq_plus_one_int64_tokens_from_their_split_only(tmp_path, small_prefix):
    train, valid, test = build_gpt_datasets(small_prefix, None, "80,15,5", 256, 7,
                                            num_samples=(200, 20, 5), cache_dir=str(tmp_path),
                                            show_progress=False)
    n = len(IndexedDataset(small_prefix))
    ranges = split_document_ranges("80,15,5", n)
    assert ranges == [(0, 720), (720, 855), (855, 900)]
    for dataset, (begin, end) in zip((train, valid, test), ranges):
        assert dataset.document_index.min() >= begin and dataset.document_index.max() < end
        sample = dataset[0]["tokens"]
        assert sample.dtype == np.int64 and sample.shape == (257,)
    # split ranges are disjoint and cover every document
    assert ranges[0][1] == ranges[1][0] and ranges[1][1] == ranges[2][0] and ranges[2][1] == n


def test_loops_over_epochs_when_the_corpus_is_too_small(tmp_path, small_prefix):
    ds = IndexedDataset(small_prefix)
    one_epoch = (ds.num_tokens - 1) // 128
    train, _, _ = build_gpt_datasets(small_prefix, None, "100,0,0", 128, 1,
                                     num_samples=(3 * one_epoch + 5, 0, 0), cache_dir=str(tmp_path),
                                     show_progress=False)
    assert len(train) >= 3 * one_epoch + 5
    assert len(train.document_index) == 4 * len(ds)       # four epochs of documents
    counts = np.bincount(train.document_index, minlength=len(ds))
    assert set(counts.tolist()) == {4}
    last = train[len(train) - 1]["tokens"]
    assert last.shape == (129,)


def test_weight_zero_split_is_none_and_bad_settings_are_named(tmp_path, small_prefix):
    train, valid, test = build_gpt_datasets(small_prefix, None, "99,1", 64, 1, num_samples=(10, 2, 0),
                                            cache_dir=str(tmp_path), show_progress=False)
    assert test is None and len(valid) >= 2
    # a split too small for one sample is None when no sample is asked of it ...
    tiny_test = "998,1,1"          # 1 document in the test split
    _, _, test = build_gpt_datasets(small_prefix, None, tiny_test, 4096, 1, num_samples=(10, 0, 0),
                                    cache_dir=str(tmp_path), show_progress=False)
    assert test is None
    # ... and an error when samples are asked of it
    with pytest.raises(DatasetConfigError, match="test split .* too few for one sample"):
        build_gpt_datasets(small_prefix, None, tiny_test, 4096, 1, num_samples=(10, 0, 3),
                           cache_dir=str(tmp_path), show_progress=False)
    cases = [(dict(split="a,b"), "split 'a,b'"),
             (dict(split="1,2,3,4"), "up to three"),
             (dict(weights=[1.0, 2.0]), "2 weights for 1 dataset"),
             (dict(weights=[-1.0]), "positive"),
             (dict(split="999999,1,0", num_samples=(10, 5, 0)), "no documents"),
             (dict(seq_length=10**7), "too few for one sample")]
    for change, message in cases:
        args = dict(prefixes=small_prefix, weights=None, split="90,10,0", seq_length=64, seed=1,
                    num_samples=(10, 2, 0), cache_dir=str(tmp_path), show_progress=False)
        args.update(change)
        with pytest.raises(DatasetConfigError, match=message):
            build_gpt_datasets(**args)


def test_blend_follows_the_weights(tmp_path, two_prefixes):
    n = 3000
    train, valid, _ = build_gpt_datasets(two_prefixes, [0.25, 0.75], "95,5,0", 64, 3,
                                         num_samples=(n, 100, 0), cache_dir=str(tmp_path),
                                         show_progress=False)
    assert len(train) >= n
    ids = np.array([train[i]["dataset_id"] for i in range(n)])
    assert abs((ids == 0).sum() - 0.25 * n) <= 1
    for k in (10, 100, 1000):                          # also at every prefix of the run
        assert abs((ids[:k] == 0).sum() - 0.25 * k) <= 1
    # the samples really come from the named corpus: Jargon entries are not Bible chapters
    kjv = IndexedDataset(two_prefixes[0])
    first_kjv = next(i for i in range(n) if ids[i] == 0)
    tokens = train[first_kjv]["tokens"]
    stream = np.concatenate([kjv[i] for i in range(len(kjv))])
    windows = np.lib.stride_tricks.sliding_window_view(stream, 16)
    assert (windows == tokens[:16]).all(axis=1).any()


def test_blend_without_weights_is_proportional_to_tokens(tmp_path, two_prefixes):
    train, _, _ = build_gpt_datasets(two_prefixes, None, "100,0,0", 64, 3, num_samples=(2000, 0, 0),
                                     cache_dir=str(tmp_path), show_progress=False)
    tokens = [IndexedDataset(p).num_tokens for p in two_prefixes]
    share = tokens[0] / sum(tokens)
    ids = np.array([train[i]["dataset_id"] for i in range(2000)])
    assert abs((ids == 0).mean() - share) < 0.002


def test_indices_are_cached_and_reused(tmp_path, small_prefix, monkeypatch):
    args = (small_prefix, None, "90,10,0", 64, 5)
    first = build_gpt_datasets(*args, num_samples=(300, 10, 0), cache_dir=str(tmp_path),
                               show_progress=False)
    files = sorted(os.listdir(tmp_path))
    assert len([f for f in files if f.endswith(".npy")]) == 6 and \
        len([f for f in files if f.endswith("description.json")]) == 2

    def must_not_build(*a, **k):
        raise AssertionError("rebuilt a cached index")
    monkeypatch.setattr(gd, "build_gpt_indices", must_not_build)
    again = build_gpt_datasets(*args, num_samples=(300, 10, 0), cache_dir=str(tmp_path),
                               show_progress=False)
    assert all(np.array_equal(first[0][i]["tokens"], again[0][i]["tokens"]) for i in range(0, 300, 7))
    assert isinstance(again[0].shuffle_index, np.memmap)
    # a different request is a different cache entry
    with pytest.raises(AssertionError, match="rebuilt"):
        build_gpt_datasets(*args, num_samples=(301, 10, 0), cache_dir=str(tmp_path), show_progress=False)


def test_default_cache_is_beside_the_data(small_prefix):
    build_gpt_datasets(small_prefix, None, "90,10,0", 32, 11, num_samples=(5, 1, 0), show_progress=False)
    assert os.path.isdir(os.path.join(os.path.dirname(small_prefix), "cache", "sample_indices"))


def test_barrier_comes_after_the_builder_has_published(tmp_path, small_prefix):
    seen = []

    def barrier():
        seen.append(sorted(f for f in os.listdir(tmp_path) if f.endswith(".json")))
    build_gpt_datasets(small_prefix, None, "90,10,0", 64, 2, num_samples=(50, 5, 0),
                       cache_dir=str(tmp_path), barrier=barrier, show_progress=False)
    assert len(seen) == 1 and len(seen[0]) == 2


def test_non_builder_rank_with_barrier_needs_the_cache(tmp_path, small_prefix):
    with pytest.raises(CacheError, match="builder rank has not built it"):
        build_gpt_datasets(small_prefix, None, "90,10,0", 64, 2, num_samples=(50, 5, 0),
                           cache_dir=str(tmp_path), is_builder_rank=False, barrier=lambda: None,
                           show_progress=False)
    assert os.listdir(tmp_path) == []          # a non-builder never writes


def test_non_builder_rank_without_barrier_waits_for_the_builder(tmp_path, small_prefix, monkeypatch):
    monkeypatch.setattr(index_cache.CacheEntry, "wait", _fast_wait)
    result = {}

    def follower():
        result["datasets"] = build_gpt_datasets(small_prefix, None, "90,10,0", 64, 9, num_samples=(40, 4, 0),
                                                cache_dir=str(tmp_path), is_builder_rank=False,
                                                show_progress=False, wait_timeout_s=30)
    thread = threading.Thread(target=follower)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()                     # waiting: nothing built yet
    built = build_gpt_datasets(small_prefix, None, "90,10,0", 64, 9, num_samples=(40, 4, 0),
                               cache_dir=str(tmp_path), show_progress=False)
    thread.join(30)
    follower_train = result["datasets"][0]
    assert np.array_equal(follower_train[13]["tokens"], built[0][13]["tokens"])


def _fast_wait(self, timeout_s, poll_s=0.05):
    deadline = time.monotonic() + timeout_s
    while not self.exists():
        if time.monotonic() > deadline:
            raise CacheError("timeout")
        time.sleep(poll_s)


def test_unwritable_cache_folder_is_named(tmp_path, small_prefix):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot create the index cache folder .*file/cache"):
        build_gpt_datasets(small_prefix, None, "90,10,0", 64, 2, num_samples=(50, 5, 0),
                           cache_dir=str(blocker / "cache"), show_progress=False)
