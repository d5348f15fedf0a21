import gzip
import multiprocessing
import os
import re
from collections import Counter

from megatron_sffn.data import assets
from megatron_sffn.data.indexed_dataset import IndexedDataset
from megatron_sffn.data.tokenizer import SentencePieceTokenizer


def test_bundled_corpus_is_real_english_prose_of_the_right_size(corpus_records):
    text_bytes = sum(len(r["text"].encode()) for r in corpus_records)
    assert 1e6 <= text_bytes <= 20e6
    assert {r["source"] for r in corpus_records} == {"kjv", "devil", "jargon"}
    words = Counter(w.lower() for r in corpus_records for w in re.findall(r"[A-Za-z]+", r["text"]))
    total = sum(words.values())
    # the most frequent English function words dominate, as in any real English text
    assert [w for w, _ in words.most_common(3)] == ["the", "and", "of"]
    assert words["the"] / total > 0.04
    assert len(words) > 20000                               # a real vocabulary, not a generator's
    licence = open(os.path.join(assets.ASSETS_DIR, "LICENSE-corpus.txt")).read()
    for name in ("bible-kjv-text", "dict-devil", "dict-jargon", "public domain"):
        assert name in licence


def test_bundled_tokenizer_covers_the_corpus_well(corpus_records):
    tok = SentencePieceTokenizer(assets.default_tokenizer_path())
    sample = "\n".join(r["text"] for r in corpus_records[::50])
    ids = tok.encode(sample)
    assert tok.decode(ids) == sample
    assert len(sample) / len(ids) > 3.0                     # a trained vocabulary, not bytes


def _build(cache_dir):
    return assets.default_data_prefix(cache_dir)


def test_default_data_prefix_builds_once_even_when_ranks_race(tmp_path):
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        prefixes = pool.map(_build, [str(tmp_path)] * 2)
    assert prefixes[0] == prefixes[1]
    entries = os.listdir(tmp_path)
    assert len(entries) == 1 and entries[0].startswith("embedded-")   # no temporary leftovers
    ds = IndexedDataset(prefixes[0], verify=True)
    with gzip.open(assets.default_corpus_path(), "rt") as stream:
        n_records = sum(1 for _ in stream)
    assert len(ds) == n_records
    tok = SentencePieceTokenizer(assets.default_tokenizer_path())
    assert ds[0][-1] == tok.eos_id
    mtime = os.path.getmtime(prefixes[0] + ".idx")
    assert assets.default_data_prefix(str(tmp_path)) == prefixes[0]
    assert os.path.getmtime(prefixes[0] + ".idx") == mtime        # reused, not rebuilt


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEGATRON_SFFN_CACHE", str(tmp_path / "c"))
    assert assets.default_cache_dir() == str(tmp_path / "c")
    monkeypatch.delenv("MEGATRON_SFFN_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert assets.default_cache_dir() == str(tmp_path / "x" / "megatron_sffn")


def test_unwritable_cache_folder_is_named(tmp_path):
    import pytest
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot write the bundled dataset to .*file/sub.*MEGATRON_SFFN_CACHE"):
        assets.default_data_prefix(str(blocker / "sub"))
