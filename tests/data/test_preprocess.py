import gzip
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from megatron_sffn.data import preprocess as pp
from megatron_sffn.data.indexed_dataset import IndexedDataset
from megatron_sffn.data.preprocess import PreprocessConfig, PreprocessError, preprocess
from megatron_sffn.data.sources import InputError
from megatron_sffn.data.tokenizer import SentencePieceTokenizer

from .conftest import write_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(inputs, out, tokenizer_path, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("append_eod", True)
    config = PreprocessConfig(inputs=inputs if isinstance(inputs, list) else [inputs],
                              json_keys=kw.pop("keys", ["text"]), tokenizer_model=tokenizer_path,
                              output_prefix=str(out), show_progress=False, **kw)
    return preprocess(config)


def read_texts(prefix, tokenizer_path, eod=True):
    tok = SentencePieceTokenizer(tokenizer_path)
    ds = IndexedDataset(prefix, verify=True)
    texts = []
    for i in range(len(ds)):
        ids = ds[i].tolist()
        if eod:
            assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
            ids = ids[:-1]
        texts.append(tok.decode(ids))
    return texts


def test_round_trip_is_exact(tmp_path, small_jsonl, tokenizer_path):
    path, records = small_jsonl
    summary = run(path, tmp_path / "out", tokenizer_path)
    prefix = str(tmp_path / "out") + "_text_document"
    assert read_texts(prefix, tokenizer_path) == [r["text"] for r in records]
    assert summary.documents == len(records) and summary.skipped == {}
    assert summary.tokens == IndexedDataset(prefix).num_tokens
    assert IndexedDataset(prefix).dtype == np.uint16


def test_without_append_eod_tokens_equal_plain_encoding(tmp_path, small_jsonl, tokenizer_path):
    path, records = small_jsonl
    run(path, tmp_path / "o", tokenizer_path, append_eod=False)
    ds = IndexedDataset(str(tmp_path / "o") + "_text_document")
    tok = SentencePieceTokenizer(tokenizer_path)
    for i in (0, 123, len(records) - 1):
        assert ds[i].tolist() == tok.encode(records[i]["text"])


def test_output_does_not_depend_on_workers_or_batching(tmp_path, small_jsonl, tokenizer_path):
    path, _ = small_jsonl
    outputs = []
    for i, (workers, batch_bytes) in enumerate([(0, 1 << 20), (1, 7_000), (2, 50_000)]):
        run(path, tmp_path / f"w{i}", tokenizer_path, workers=workers, batch_bytes=batch_bytes)
        prefix = str(tmp_path / f"w{i}") + "_text_document"
        outputs.append(tuple(open(prefix + ext, "rb").read() for ext in (".bin", ".idx")))
    assert outputs[0] == outputs[1] == outputs[2]


def test_gz_parquet_folder_and_saved_dataset_inputs(tmp_path, corpus_records, tokenizer_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    records = corpus_records[:120]
    texts = [r["text"] for r in records]
    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl.gz", records[:40], compress=True)
    pq.write_table(pa.table({"text": texts[40:80], "n": list(range(40))}), folder / "b.parquet")
    write_jsonl(folder / "c.jsonl", records[80:])
    run(str(folder), tmp_path / "f", tokenizer_path)
    assert read_texts(str(tmp_path / "f") + "_text_document", tokenizer_path) == texts

    csv_folder = tmp_path / "csv"           # other formats: read through `datasets`
    csv_folder.mkdir()
    import csv
    with open(csv_folder / "part.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text"])
        writer.writerows([[t] for t in texts[:20]])
    run(str(csv_folder), tmp_path / "c", tokenizer_path)
    assert read_texts(str(tmp_path / "c") + "_text_document", tokenizer_path) == texts[:20]

    saved = tmp_path / "saved"
    datasets.Dataset.from_list([{"content": t, "url": "u"} for t in texts]).save_to_disk(str(saved))
    run(str(saved), tmp_path / "h", tokenizer_path, keys=["content"])
    assert read_texts(str(tmp_path / "h") + "_content_document", tokenizer_path) == texts


def test_several_json_keys_give_one_dataset_each(tmp_path, corpus_records, tokenizer_path):
    records = [{"text": r["text"], "title": r["title"]} for r in corpus_records[:30]]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    summary = run(data, tmp_path / "k", tokenizer_path, keys=["text", "title"])
    assert set(summary.outputs) == {"all/text", "all/title"}
    assert read_texts(str(tmp_path / "k") + "_title_document", tokenizer_path) == [r["title"] for r in records]


def test_split_outputs_partition_the_documents(tmp_path, small_jsonl, tokenizer_path):
    path, records = small_jsonl
    summary = run(path, tmp_path / "s", tokenizer_path, split=[90, 10], workers=1, batch_bytes=20_000)
    train = read_texts(str(tmp_path / "s") + "_train_text_document", tokenizer_path)
    valid = read_texts(str(tmp_path / "s") + "_valid_text_document", tokenizer_path)
    assert len(train) + len(valid) == len(records)
    assert sorted(train + valid) == sorted(r["text"] for r in records)
    assert 0.05 < len(valid) / len(records) < 0.16
    # order inside each split is the input order
    order = {r["text"]: i for i, r in enumerate(records)}
    assert [order[t] for t in valid] == sorted(order[t] for t in valid)
    assert set(summary.outputs) == {"train/text", "valid/text"}
    # the assignment is a function of the record's position, not of batching
    run(path, tmp_path / "s2", tokenizer_path, split=[90, 10], workers=0)
    assert read_texts(str(tmp_path / "s2") + "_valid_text_document", tokenizer_path) == valid


# ---- bad input --------------------------------------------------------------------------
def _bad_file(tmp_path, records):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(records[0]).encode(),
             json.dumps({"title": "no text field"}).encode(),            # line 2
             b'{"text": "caf\xe9 not utf-8"}',                             # line 3
             json.dumps({"text": ""}).encode(),                          # line 4
             json.dumps({"text": "   \n"}).encode(),                     # line 5
             b"{broken json",                                            # line 6
             json.dumps({"text": 42}).encode(),                          # line 7
             json.dumps(["a", "list"]).encode(),                         # line 8
             b"",                                                        # blank: ignored
             json.dumps(records[1]).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_bad_records_are_skipped_and_counted(tmp_path, corpus_records, tokenizer_path):
    path = _bad_file(tmp_path, corpus_records)
    summary = run(path, tmp_path / "b", tokenizer_path)
    assert summary.documents == 2
    assert summary.skipped == {"missing field 'text'": 1, "not UTF-8": 1, "empty document": 2,
                               "not valid JSON": 1, "field 'text' is not a string": 1,
                               "not a JSON object": 1}
    assert summary.examples["empty document"] == [f"{path}:4", f"{path}:5"]
    assert "skipped    2 records: empty document" in summary.report()
    assert read_texts(str(tmp_path / "b") + "_text_document", tokenizer_path) == \
        [corpus_records[0]["text"], corpus_records[1]["text"]]


def test_strict_mode_stops_at_the_first_bad_record(tmp_path, corpus_records, tokenizer_path):
    path = _bad_file(tmp_path, corpus_records)
    with pytest.raises(PreprocessError, match=r"bad\.jsonl:2: missing field 'text'"):
        run(path, tmp_path / "b", tokenizer_path, strict=True)
    assert os.listdir(tmp_path) == ["bad.jsonl"]


def test_all_records_bad_is_an_error(tmp_path, tokenizer_path):
    path = write_jsonl(tmp_path / "e.jsonl", [{"text": ""}, {"text": " "}])
    with pytest.raises(PreprocessError, match="no documents to write.*2 empty document"):
        run(path, tmp_path / "o", tokenizer_path)
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl"]


def test_wrong_key_fails_before_any_work_and_names_the_fields(tmp_path, corpus_records, tokenizer_path):
    path = write_jsonl(tmp_path / "rw.jsonl", [{"content": r["text"], "url": "x"} for r in corpus_records[:5]])
    with pytest.raises(InputError, match=r"rw\.jsonl: field 'text' not found; its records have "
                                         r"'content', 'url'.*--json-keys content"):
        run(path, tmp_path / "o", tokenizer_path)
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(InputError, match=r"p\.parquet: field 'text' not found"):
        run(str(tmp_path / "p.parquet"), tmp_path / "o", tokenizer_path)


@pytest.mark.parametrize("case", ["missing", "not_gzip", "not_parquet", "unsupported", "empty_folder",
                                  "unreadable", "truncated_gzip"])
def test_unreadable_inputs_are_named(tmp_path, corpus_records, tokenizer_path, case):
    target = tmp_path / "in"
    target.mkdir()
    if case == "missing":
        path, match = str(target / "nope.jsonl"), r"nope\.jsonl not found"
    elif case == "not_gzip":
        path = str(target / "x.jsonl.gz")
        open(path, "wb").write(b"plain text, not gzip\n")
        match = r"x\.jsonl\.gz cannot be read"
    elif case == "not_parquet":
        path = str(target / "x.parquet")
        open(path, "wb").write(b"PAR?")
        match = r"x\.parquet is not a readable parquet file"
    elif case == "unsupported":
        path = str(target / "x.txt")
        open(path, "w").write("hello")
        match = r"x\.txt has an unsupported type"
    elif case == "empty_folder":
        path, match = str(target), r"holds no jsonl"
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root can read any file")
        path = write_jsonl(target / "locked.jsonl", corpus_records[:2])
        os.chmod(path, 0)
        match = r"locked\.jsonl is not readable"
    else:  # a gzip file cut in the middle: found while reading, output discarded
        raw = gzip.compress(b"".join((json.dumps(r) + "\n").encode() for r in corpus_records[:300]))
        path = str(target / "cut.jsonl.gz")
        open(path, "wb").write(raw[: len(raw) // 2])
        match = r"cut\.jsonl\.gz cannot be read"
    with pytest.raises(InputError, match=match):
        run(path, tmp_path / "out" / "o", tokenizer_path)
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_unknown_dataset_name_is_a_clear_error(tmp_path, tokenizer_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input",
                             "no-such-org/no-such-dataset", "--json-keys", "content",
                             "--tokenizer-model", tokenizer_path, "--output-prefix", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 2
    assert "could not open dataset 'no-such-org/no-such-dataset' through `datasets`" in result.stderr
    assert os.listdir(tmp_path) == []


def test_interrupted_run_leaves_previous_output_and_no_partial_files(tmp_path, small_jsonl,
                                                                     tokenizer_path, monkeypatch):
    path, _ = small_jsonl
    run(path, tmp_path / "o", tokenizer_path)
    prefix = str(tmp_path / "o") + "_text_document"
    before = [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")]
    real = pp._all_batches

    def interrupted(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch
    monkeypatch.setattr(pp, "_all_batches", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(path, tmp_path / "o", tokenizer_path, workers=1, batch_bytes=20_000)
    assert sorted(os.listdir(tmp_path)) == ["o_text_document.bin", "o_text_document.idx"]
    assert [open(prefix + ext, "rb").read() for ext in (".bin", ".idx")] == before


def _default_sigint():
    """A job started in the background of a shell (`cmd &`, nohup) inherits SIGINT ignored, and
    Python then installs no KeyboardInterrupt handler: Ctrl-C would do nothing. The CLI is
    tested as a terminal runs it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_interrupted_mid_run_writes_nothing(tmp_path, corpus_records, tokenizer_path, signum):
    big = write_jsonl(tmp_path / "big.jsonl", corpus_records * 6)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "tools/preprocess_data.py", "--input", big,
                             "--json-keys", "text", "--tokenizer-model", tokenizer_path,
                             "--output-prefix", str(out / "o"), "--workers", "1", "--append-eod",
                             "--no-progress"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 60
    while not (out.exists() and any(".tmp-" in n for n in os.listdir(out))):
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, "the run finished before it could be interrupted: make the input larger"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "no output written" in err
    assert os.listdir(out) == []


def test_cli_prints_summary_and_writes_megatron_names(tmp_path, small_jsonl, tokenizer_path):
    path, records = small_jsonl
    result = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", path,
                             "--json-keys", "text", "--tokenizer-model", tokenizer_path,
                             "--output-prefix", str(tmp_path / "corpus"), "--workers", "1",
                             "--append-eod", "--summary-json", str(tmp_path / "s.json")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"documents  {len(records):,} written" in result.stdout
    assert "tokens/s" in result.stdout and "docs/s" in result.stderr    # progress bar
    assert os.path.isfile(tmp_path / "corpus_text_document.bin")
    assert json.load(open(tmp_path / "s.json"))["documents"] == len(records)
    bad = subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", path,
                          "--json-keys", "content", "--tokenizer-model", tokenizer_path,
                          "--output-prefix", str(tmp_path / "x")], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "error: input file" in bad.stderr and "'content' not found" in bad.stderr
