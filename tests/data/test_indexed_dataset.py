import os
import struct

import numpy as np
import pytest

from megatron_sffn.data.indexed_dataset import (IndexedDataset, IndexedDatasetError,
                                                IndexedDatasetWriter, token_dtype_for_vocab)


def _write(prefix, docs, dtype=np.uint16):
    with IndexedDatasetWriter(str(prefix), dtype) as writer:
        for doc in docs:
            writer.add_document(doc)
    return str(prefix)


def _docs(seed=0, n=50, vocab=8000):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=rng.integers(0, 300)) for _ in range(n)]


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_write_read_round_trip(tmp_path, dtype):
    docs = _docs()
    prefix = _write(tmp_path / "d", docs, dtype)
    ds = IndexedDataset(prefix, verify=True)
    assert len(ds) == ds.num_documents == len(docs)
    assert ds.dtype == np.dtype(dtype)
    assert list(ds.document_indices) == list(range(len(docs) + 1))
    assert ds.num_tokens == sum(len(d) for d in docs)
    for i, doc in enumerate(docs):
        assert np.array_equal(ds[i], doc)
        assert list(ds.sizes)[i] == len(doc)
    assert all(np.array_equal(a, b) for a, b in zip(ds[3:9], docs[3:9]))
    assert np.array_equal(ds.get(5, offset=2, length=4), docs[5][2:6])
    assert np.array_equal(ds[-1], docs[-1])
    with pytest.raises(IndexError):
        ds[len(docs)]


def test_batch_add_matches_single_adds(tmp_path):
    docs = _docs(1)
    a = _write(tmp_path / "a", docs)
    with IndexedDatasetWriter(str(tmp_path / "b"), np.uint16) as writer:
        writer.add_documents(np.concatenate(docs), [len(d) for d in docs])
    for ext in (".bin", ".idx"):
        assert open(a + ext, "rb").read() == open(str(tmp_path / "b") + ext, "rb").read()


def test_dtype_choice_matches_megatron():
    assert token_dtype_for_vocab(32000) == np.uint16
    assert token_dtype_for_vocab(65500) == np.int32
    assert token_dtype_for_vocab(128256) == np.int32


def test_out_of_range_tokens_rejected(tmp_path):
    writer = IndexedDatasetWriter(str(tmp_path / "x"), np.uint16)
    with pytest.raises(ValueError, match="out of range"):
        writer.add_document(np.array([1, 70000]))
    writer.abort()
    assert not os.listdir(tmp_path)


def test_failed_write_leaves_existing_dataset_untouched(tmp_path):
    docs = _docs(2)
    prefix = _write(tmp_path / "d", docs)
    before = {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx")}
    with pytest.raises(RuntimeError):
        with IndexedDatasetWriter(prefix, np.uint16) as writer:
            writer.add_document([1, 2, 3])
            raise RuntimeError("interrupted")
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx"]
    assert {ext: open(prefix + ext, "rb").read() for ext in (".bin", ".idx")} == before


def test_unfinished_write_never_looks_complete(tmp_path):
    writer = IndexedDatasetWriter(str(tmp_path / "d"), np.uint16)
    writer.add_document([5, 6, 7])
    # mid-run: only temporary files exist, nothing opens at the prefix
    assert all(".tmp-" in name for name in os.listdir(tmp_path))
    with pytest.raises(IndexedDatasetError, match="not found"):
        IndexedDataset(str(tmp_path / "d"))
    writer.finalize()
    assert list(IndexedDataset(str(tmp_path / "d"))[0]) == [5, 6, 7]


def test_empty_dataset(tmp_path):
    prefix = _write(tmp_path / "e", [])
    ds = IndexedDataset(prefix, verify=True)
    assert len(ds) == 0 and ds.num_tokens == 0


# ---- corrupt and truncated files: every error names the file ---------------------------
@pytest.fixture
def dataset(tmp_path):
    return _write(tmp_path / "d", _docs(3))


def _expect(prefix, match, verify=False):
    with pytest.raises(IndexedDatasetError, match=match):
        IndexedDataset(prefix, verify=verify)


def test_missing_files(dataset):
    os.remove(dataset + ".bin")
    _expect(dataset, r"d\.bin not found")


def test_truncated_index(dataset):
    size = os.path.getsize(dataset + ".idx")
    os.truncate(dataset + ".idx", size - 9)
    _expect(dataset, r"d\.idx is truncated")
    os.truncate(dataset + ".idx", 20)
    _expect(dataset, r"d\.idx is truncated.*header")


def test_truncated_data(dataset):
    os.truncate(dataset + ".bin", os.path.getsize(dataset + ".bin") - 2)
    _expect(dataset, r"d\.bin is truncated")


def test_data_from_another_run(dataset):
    with open(dataset + ".bin", "ab") as f:
        f.write(b"\0\0")
    _expect(dataset, r"d\.bin does not match")


def _patch(path, offset, payload):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(payload)


def test_bad_magic_version_dtype(dataset):
    idx = dataset + ".idx"
    original = open(idx, "rb").read()
    _patch(idx, 0, b"NOTANIDX\0")
    _expect(dataset, r"d\.idx is not a Megatron indexed-dataset index")
    open(idx, "wb").write(original)
    _patch(idx, 9, struct.pack("<Q", 2))
    _expect(dataset, r"d\.idx has index version 2")
    open(idx, "wb").write(original)
    _patch(idx, 17, struct.pack("<B", 42))
    _expect(dataset, r"d\.idx names token dtype code 42")


def test_bad_offsets_found_by_verify(dataset):
    ds = IndexedDataset(dataset)
    n = len(ds)
    del ds
    pointer_offset = 34 + 4 * n + 8 * 5          # pointer of sequence 5
    _patch(dataset + ".idx", pointer_offset, struct.pack("<q", 2))
    IndexedDataset(dataset)                      # cheap checks cannot see it
    _expect(dataset, r"d\.idx is corrupt: the offset of sequence 5", verify=True)


def test_bad_document_indices(dataset):
    n = len(IndexedDataset(dataset))
    _patch(dataset + ".idx", 34 + 12 * n + 8 * n, struct.pack("<q", n + 7))
    _expect(dataset, r"d\.idx is corrupt: its document indices")


def test_pickles_for_dataloader_workers(dataset):
    import pickle
    ds = IndexedDataset(dataset)
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(clone[4], ds[4])
