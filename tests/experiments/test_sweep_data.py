"""experiments/sweep/sweep_data.py: pack here, unpack elsewhere, byte-identical dataset with the held-out
documents last, selected exactly by the manifest's split string."""
import gzip
import json
import os

import numpy as np
import pytest

from megatron_sffn.data import assets
from megatron_sffn.data.gpt_dataset import split_document_ranges
from megatron_sffn.data.indexed_dataset import IndexedDataset
from experiments.sweep import sweep_data


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    with gzip.open(assets.default_corpus_path(), "rt", encoding="utf-8") as f:
        lines = f.readlines()[::7]            # ~630 documents from every source
    corpus = root / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    manifest = sweep_data.pack(str(corpus), assets.default_tokenizer_path(), str(root / "carry"),
                               str(root / "here"), workers=0)
    return root, manifest, len(lines)


def test_pack_writes_the_dataset_and_a_small_carry(packed):
    root, manifest, documents = packed
    d = manifest["dataset"]
    assert d["train_documents"] + d["valid_documents"] == documents and d["valid_documents"] > 0
    assert d["data_split"] == f"{d['train_documents']},{d['valid_documents']},0"
    assert sorted(os.listdir(root / "carry")) == sorted(["manifest.json", *sweep_data.manifest_files()])
    data_bytes = os.path.getsize(sweep_data.dataset_prefix(str(root / "here")) + ".bin")
    assert manifest["bytes"][sweep_data.TOKENS_FILE] < 0.6 * data_bytes


def test_unpack_rebuilds_the_same_bytes_with_valid_documents_last(packed):
    root, manifest, _ = packed
    data = sweep_data.unpack(str(root / "carry"), str(root / "there"))
    here, there = sweep_data.dataset_prefix(str(root / "here")), data["prefix"]
    for ext in (".bin", ".idx"):
        assert open(here + ext, "rb").read() == open(there + ext, "rb").read()
    merged = IndexedDataset(there)
    n_train = data["train_documents"]
    for split, first in (("train", 0), ("valid", n_train)):
        part = IndexedDataset(os.path.join(root / "here", f"{sweep_data.NAME}_{split}_text_document"))
        for i in (0, len(part) - 1):
            assert np.array_equal(part[i], merged[first + i])
    train, valid, test = split_document_ranges(data["data_split"], merged.num_documents)
    assert train == (0, n_train) and valid == (n_train, merged.num_documents) and test is None
    assert data["valid_tokens"] == int(merged.sizes[n_train:].sum())
    # a second call finds it done and leaves it alone
    mtime = os.path.getmtime(there + ".bin")
    assert sweep_data.unpack(str(root / "carry"), str(root / "there"))["bin_sha256"] == data["bin_sha256"]
    assert os.path.getmtime(there + ".bin") == mtime


def test_a_damaged_carry_is_refused(packed, tmp_path):
    root, _, _ = packed
    carry = tmp_path / "carry"
    carry.mkdir()
    for name in os.listdir(root / "carry"):
        (carry / name).write_bytes((root / "carry" / name).read_bytes())
    tokens = carry / sweep_data.TOKENS_FILE
    tokens.write_bytes(tokens.read_bytes()[:-10])
    with pytest.raises(SystemExit, match="does not match manifest.json"):
        sweep_data.unpack(str(carry), str(tmp_path / "data"))
    assert json.load(open(carry / "manifest.json"))["dataset"]
