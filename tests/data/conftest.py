"""Shared fixtures: small real corpora cut from the bundled one, and its tokenizer."""
import gzip
import json

import pytest

from megatron_sffn.data import assets


@pytest.fixture(scope="session")
def tokenizer_path():
    return assets.default_tokenizer_path()


@pytest.fixture(scope="session")
def corpus_records():
    """The bundled corpus' records (real English prose)."""
    with gzip.open(assets.default_corpus_path(), "rt", encoding="utf-8") as stream:
        return [json.loads(line) for line in stream]


def write_jsonl(path, records, compress=False):
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def small_jsonl(tmp_path_factory, corpus_records):
    """300 documents from each of the corpus' sources, as plain jsonl."""
    by_source = {}
    for r in corpus_records:
        by_source.setdefault(r["source"], []).append(r)
    records = [r for rs in by_source.values() for r in rs[:300]]
    path = tmp_path_factory.mktemp("corpus") / "small.jsonl"
    return write_jsonl(path, records), records


@pytest.fixture(scope="session")
def small_prefix(tmp_path_factory, small_jsonl, tokenizer_path):
    """The small corpus preprocessed with --append-eod."""
    from megatron_sffn.data.preprocess import PreprocessConfig, preprocess
    out = tmp_path_factory.mktemp("indexed") / "small"
    preprocess(PreprocessConfig(inputs=[small_jsonl[0]], json_keys=["text"],
                                tokenizer_model=tokenizer_path, output_prefix=str(out),
                                workers=0, append_eod=True, show_progress=False))
    return str(out) + "_text_document"


def megatron_core_available():
    """megatron-core from the package index, importable on this (CPU-only) machine."""
    import importlib
    import warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importlib.import_module("megatron.core.datasets.indexed_dataset")
        return True
    except Exception:
        return False
