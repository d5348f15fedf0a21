"""jsonl.xz input: read like jsonl.gz, without `datasets`, corrupt data named by file."""
import json
import lzma
import subprocess
import sys

import pytest

from megatron_sffn.data.indexed_dataset import IndexedDataset
from megatron_sffn.data.preprocess import PreprocessConfig, preprocess
from megatron_sffn.data.sources import InputError

from .conftest import write_jsonl
from .test_preprocess import ROOT


def _write_xz(path, records):
    with lzma.open(path, "wt", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record) + "\n")
    return str(path)


def _run(path, out, tokenizer_path, workers=0):
    preprocess(PreprocessConfig(inputs=[path], json_keys=["text"], tokenizer_model=tokenizer_path,
                                output_prefix=str(out), workers=workers, append_eod=True,
                                show_progress=False, split=(9, 1)))
    return [open(f"{out}_{s}_text_document{ext}", "rb").read() for s in ("train", "valid") for ext in (".bin", ".idx")]


def test_xz_gives_the_same_dataset_as_plain_jsonl(tmp_path, corpus_records, tokenizer_path):
    records = corpus_records[:200]
    plain = write_jsonl(tmp_path / "c.jsonl", records)
    xz = _write_xz(tmp_path / "c.jsonl.xz", records)
    assert _run(xz, tmp_path / "x", tokenizer_path, workers=2) == _run(plain, tmp_path / "p", tokenizer_path)
    assert len(IndexedDataset(str(tmp_path / "x") + "_train_text_document")) + \
        len(IndexedDataset(str(tmp_path / "x") + "_valid_text_document")) == len(records)


def test_truncated_xz_is_named(tmp_path, corpus_records, tokenizer_path):
    raw = lzma.compress(b"".join((json.dumps(r) + "\n").encode() for r in corpus_records[:300]))
    path = tmp_path / "cut.jsonl.xz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"cut\.jsonl\.xz cannot be read"):
        _run(str(path), tmp_path / "o", tokenizer_path)


def test_preprocessing_jsonl_xz_does_not_import_datasets(tmp_path, corpus_records, tokenizer_path):
    """The GPU hosts have no `datasets`: the jsonl path must never import it."""
    path = _write_xz(tmp_path / "c.jsonl.xz", corpus_records[:50])
    code = ("import sys; sys.modules['datasets'] = None\n"   # any import of it now raises
            "from tools.preprocess_data import main\n"
            f"sys.exit(main(['--input', {path!r}, '--json-keys', 'text', '--tokenizer-model', "
            f"{tokenizer_path!r}, '--output-prefix', {str(tmp_path / 'o')!r}, '--workers', '2', "
            "'--append-eod', '--split', '99,1']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert IndexedDataset(str(tmp_path / "o") + "_train_text_document").num_tokens > 0
