"""Bad input to the user's tools (evaluate, generate, inspect_checkpoint, inspect_data,
preprocess_data, train_tokenizer): one line on stderr naming the input, the documented exit
code, and nothing on disk changed. Rows of docs/errors.md; convert_checkpoint has its own
file (test_convert_errors.py)."""
import os

import pytest

from megatron_sffn.data import assets

from .common import call, synthetic_consolidated
from tests.disk_state import snapshot



def fails(main, argv, capsys, root, code=2):
    """Call the tool; assert the exit code, one error line and an unchanged `root`; the line."""
    before = snapshot(root)
    got, out, err = call(main, argv, capsys)
    assert got == code, (got, out, err)
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    assert snapshot(root) == before
    return line


@pytest.fixture
def records(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"text": "Some words of prose."}\n{"text": "And a few more words."}\n')
    return str(path)


def test_evaluate_missing_dataset(tmp_path, capsys):
    from tools.evaluate import main
    synthetic_consolidated(str(tmp_path / "ckpt"))
    line = fails(main, ["--load", tmp_path / "ckpt", "--data-path", tmp_path / "corpus"], capsys, tmp_path)
    assert f"dataset file {tmp_path / 'corpus'}.bin not found" in line and "tools/preprocess_data.py" in line


def test_generate_missing_checkpoint(tmp_path, capsys):
    from tools.generate import main
    line = fails(main, ["--load", tmp_path / "nope", "--prompt", "x"], capsys, tmp_path)
    assert f"{tmp_path / 'nope'} does not exist" in line


@pytest.mark.parametrize("flag, value, message", [
    ("--max-new-tokens", "-1", "--max-new-tokens must be >= 1, got -1"),
    ("--temperature", "-1", "--temperature must be >= 0"),
    ("--top-k", "-3", "--top-k must be >= 0"),
    ("--top-p", "1.5", "--top-p must be in (0, 1]"),
])
def test_generate_bad_sampling_flag_is_named_before_the_checkpoint_is_read(tmp_path, capsys, flag, value, message):
    from tools.generate import main
    with pytest.raises(SystemExit) as exit_info:   # the checkpoint does not even exist: not read
        main(["--load", str(tmp_path / "nope"), "--prompt", "x", flag, value])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_generate_tokenizer_larger_than_the_checkpoints_vocabulary(tmp_path, capsys):
    """A checkpoint of 128 ids with the bundled tokenizer: one line (was an IndexError)."""
    from megatron_sffn.data.tokenizer import SentencePieceTokenizer
    from tools.generate import main
    ids = SentencePieceTokenizer(assets.default_tokenizer_path()).vocab_size
    assert ids > 128
    synthetic_consolidated(str(tmp_path / "ckpt"))
    line = fails(main, ["--load", tmp_path / "ckpt", "--prompt", "x"], capsys, tmp_path)
    assert f"has {ids} ids, the checkpoint's vocabulary only 128" in line and "--tokenizer-model" in line


def test_inspect_checkpoint_missing(tmp_path, capsys):
    from tools.inspect_checkpoint import main
    line = fails(main, [tmp_path / "nope"], capsys, tmp_path)
    assert f"{tmp_path / 'nope'} does not exist" in line


def test_inspect_data_truncated_idx(tmp_path, capsys):
    """inspect_data exits 1 (its documented code for a damaged pair)."""
    from megatron_sffn.data.indexed_dataset import IndexedDatasetWriter
    from tools.inspect_data import main
    with IndexedDatasetWriter(str(tmp_path / "d")) as writer:
        for n in range(20):
            writer.add_document(list(range(n + 5)))
    os.truncate(tmp_path / "d.idx", os.path.getsize(tmp_path / "d.idx") - 9)
    line = fails(main, [tmp_path / "d"], capsys, tmp_path, code=1)
    assert f"{tmp_path / 'd'}.idx is truncated" in line


def test_inspect_data_bad_tokenizer_model_is_one_line_before_the_check(tmp_path, capsys):
    """A file that is no sentencepiece model: exit 2 and one line (it was a traceback), found
    before the dataset check runs (the pair here is damaged too, which would exit 1)."""
    from megatron_sffn.data.indexed_dataset import IndexedDatasetWriter
    from tools.inspect_data import main
    with IndexedDatasetWriter(str(tmp_path / "d")) as writer:
        writer.add_document([1, 2, 3])
    os.truncate(tmp_path / "d.idx", os.path.getsize(tmp_path / "d.idx") - 9)
    (tmp_path / "tok.model").write_text("not a model")
    line = fails(main, [tmp_path / "d", "--tokenizer-model", tmp_path / "tok.model", "--show", "1"], capsys, tmp_path)
    assert f"tokenizer model {tmp_path / 'tok.model'} is not a sentencepiece model" in line


@pytest.mark.parametrize("argv, message", [
    (["--show", "-1", "--tokenizer-model", "t"], "--show must be >= 0, got -1"),
    (["--samples", "2", "--seq-length", "0", "--tokenizer-model", "t"], "--seq-length must be positive, got 0"),
    (["--samples", "2"], "--show / --samples need --tokenizer-model"),
])
def test_inspect_data_bad_command_line_names_the_flag(tmp_path, capsys, argv, message):
    from tools.inspect_data import main
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing")] + argv)     # the flags are checked before the dataset is opened
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, message", [
    ("--workers", "-1", "--workers must be >= 0, got -1"),
    ("--batch-bytes", "0", "--batch-bytes must be >= 1, got 0"),
    ("--max-documents", "-2", "--max-documents must be >= 1, got -2"),
])
def test_preprocess_bad_sizes_are_named(tmp_path, capsys, records, flag, value, message):
    """These ran before (-1 workers as in-process, 0-byte work units) or failed with a message
    about skipped records."""
    from tools.preprocess_data import main
    line = fails(main, ["--input", records, "--tokenizer-model", assets.default_tokenizer_path(),
                        "--output-prefix", tmp_path / "out", flag, value], capsys, tmp_path)
    assert message in line


@pytest.mark.parametrize("flag, value, message", [
    ("--character-coverage", "2", "--character-coverage must be in [0.98, 1], got 2"),
    ("--threads", "0", "--threads must be >= 1, got 0"),
    ("--max-sentences", "0", "--max-sentences must be >= 1, got 0"),
    ("--max-documents", "0", "--max-documents must be >= 1, got 0"),
])
def test_train_tokenizer_bad_settings_are_named_before_reading(tmp_path, capsys, flag, value, message):
    """Before: sentencepiece's internal check after the whole input was read, or (--threads 0,
    --max-sentences 0) silently all cores / all sentences."""
    from tools.train_tokenizer import main
    line = fails(main, ["--input", tmp_path / "missing.jsonl", "--vocab-size", "300", "--model-prefix",
                        tmp_path / "tk", flag, value], capsys, tmp_path)   # the input is not even looked at
    assert message in line


def test_preprocess_missing_input(tmp_path, capsys):
    from tools.preprocess_data import main
    line = fails(main, ["--input", tmp_path / "nope.jsonl", "--tokenizer-model", assets.default_tokenizer_path(),
                        "--output-prefix", tmp_path / "out", "--workers", "0"], capsys, tmp_path)
    assert "nope.jsonl not found" in line


def test_preprocess_wrong_json_key(tmp_path, records, capsys):
    from tools.preprocess_data import main
    line = fails(main, ["--input", records, "--json-keys", "content", "--tokenizer-model",
                        assets.default_tokenizer_path(), "--output-prefix", tmp_path / "out", "--workers", "0"],
                 capsys, tmp_path)
    assert "'content' not found" in line and "text" in line


def test_preprocess_tokenizer_that_is_not_a_model(tmp_path, records, capsys):
    from tools.preprocess_data import main
    (tmp_path / "tok.model").write_text("not a model\n")
    line = fails(main, ["--input", records, "--tokenizer-model", tmp_path / "tok.model", "--output-prefix",
                        tmp_path / "out", "--workers", "0"], capsys, tmp_path)
    assert f"tokenizer model {tmp_path / 'tok.model'} is not a sentencepiece model" in line


def test_preprocess_missing_tokenizer(tmp_path, records, capsys):
    from tools.preprocess_data import main
    line = fails(main, ["--input", records, "--tokenizer-model", tmp_path / "nope.model", "--output-prefix",
                        tmp_path / "out", "--workers", "0"], capsys, tmp_path)
    assert f"tokenizer model {tmp_path / 'nope.model'} not found" in line and "tools/train_tokenizer.py" in line


def test_train_tokenizer_wrong_json_key(tmp_path, records, capsys):
    from tools.train_tokenizer import main
    line = fails(main, ["--input", records, "--json-keys", "content", "--vocab-size", "500",
                        "--model-prefix", tmp_path / "tok"], capsys, tmp_path)
    assert "'content' not found" in line


def test_train_tokenizer_vocabulary_too_small(tmp_path, records, capsys):
    from tools.train_tokenizer import main
    line = fails(main, ["--input", records, "--vocab-size", "100", "--model-prefix", tmp_path / "tok"],
                 capsys, tmp_path)
    assert "--vocab-size 100 is too small for byte fallback" in line
