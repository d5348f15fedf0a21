"""A dataset that cannot train the run stops every rank of launchers/pretrain.py with one line
from rank 0 naming the file and the fix, exit code 2, before the rendezvous and DeepSpeed's JIT
op build (training/preflight.py); nothing on disk changes (no run folder, no index cache, the
data untouched).

Real files (written with IndexedDatasetWriter, then damaged), real ranks (tests/e2e/runs.py).
"""
import os
import shutil

import numpy as np
import pytest

from megatron_sffn.data.indexed_dataset import IndexedDatasetWriter

from .runs import TINY, Ranks
from tests.disk_state import snapshot

pytestmark = pytest.mark.slow

ARGS = TINY + ["--train-steps", "2", "--eval-interval", "100", "--save-interval", "100"]
VOCAB = 8192   # configs/tiny_demo.json


def write_dataset(prefix, documents, low=5, high=7000, seed=0):
    """`documents` documents of 40..200 random token ids in [low, high)."""
    rng = np.random.default_rng(seed)
    with IndexedDatasetWriter(str(prefix), dtype=np.uint16) as writer:
        for _ in range(documents):
            writer.add_document(rng.integers(low, high, size=int(rng.integers(40, 200))))
    return str(prefix)



def fails_on_every_rank(tmp_path, data_dir, args, world=2):
    """Run; assert every rank exits 2, rank 0 prints exactly one error line and the others none,
    nothing under data_dir changed and no run folder exists. Returns rank 0's error line."""
    before = snapshot(data_dir)
    run_dir = tmp_path / "run"
    ranks = Ranks(world, ARGS + ["--run-dir", str(run_dir), *args], str(tmp_path / "logs"))
    codes, out = ranks.wait(timeout=300)
    logs = [ranks.output(r) for r in range(world)]
    assert codes == [2] * world, logs
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out[-3000:]
    assert not any("deepspeed_shm_comm" in log for log in logs), "found only after the rendezvous"
    for r in range(1, world):
        assert "error" not in logs[r].lower() and "Traceback" not in logs[r], logs[r][-3000:]
    assert snapshot(data_dir) == before
    assert not run_dir.exists()
    return errors[0]


# Each case: its test's name -> prepare(data folder) -> (launcher arguments, world size, what the
# test's assertions need). A silent rank waits out a grace period before it exits
# (training/early_errors.py), so the selected cases start together from a module fixture
# (tests/background.py, the pool for commands that mostly wait), each in its own folder,
# and each test checks its own case's result.
CASES = {}


def case(fn):
    CASES[f"test_{fn.__name__[1:]}"] = fn
    return fn


@case
def _missing_dataset(data):
    return ["--data-path", str(data / "nope")], 2, None


@case
def _truncated_bin(data):
    prefix = write_dataset(data / "corpus", 200)
    os.truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 6)
    return ["--data-path", prefix], 2, prefix


@case
def _bin_of_another_dataset(data):
    prefix = write_dataset(data / "corpus", 200)
    other = write_dataset(data / "other", 300, seed=1)
    shutil.copyfile(other + ".bin", prefix + ".bin")
    return ["--data-path", prefix], 2, prefix


@case
def _index_that_is_not_an_index(data):
    prefix = write_dataset(data / "corpus", 200)
    with open(prefix + ".idx", "r+b") as f:
        f.write(b"NOTANIDX!")
    return ["--data-path", prefix], 1, prefix


@case
def _split_that_leaves_the_validation_split_empty(data):
    """10 documents and the default split 969,30,1: documents 0..10 train, none for valid."""
    prefix = write_dataset(data / "corpus", 10)
    return ["--data-path", prefix], 2, prefix


@case
def _token_ids_beyond_the_models_vocabulary(data):
    prefix = write_dataset(data / "corpus", 200, low=100, high=20000)
    return ["--data-path", prefix], 2, prefix


@case
def _tokenizer_larger_than_the_models_vocabulary(data):
    prefix = write_dataset(data / "corpus", 200, high=4000)
    return ["--data-path", prefix, "--override", "model.vocab_size=4096"], 1, prefix


@case
def _tokenizer_file_that_is_not_a_sentencepiece_model(data):
    prefix = write_dataset(data / "corpus", 200)
    (data / "tok.model").write_text("not a model\n")
    return ["--data-path", prefix, "--override", f"data.tokenizer_model={data / 'tok.model'}"], 1, prefix


@case
def _tokenizer_file_missing(data):
    prefix = write_dataset(data / "corpus", 200)
    return ["--data-path", prefix, "--override", f"data.tokenizer_model={data / 'nope.model'}"], 1, prefix


@case
def _index_cache_folder_that_cannot_be_created(data):
    prefix = write_dataset(data / "corpus", 200)
    (data / "file").write_text("a file, not a folder\n")
    cache = data / "file" / "cache"
    return ["--data-path", prefix, "--override", f"data.cache_dir={cache}"], 1, cache


@case
def _another_tokenizer_with_the_bundled_data_is_refused(data):
    """It was silently ignored: the run trained with the bundled tokenizer, its saved config
    named the other file, and an HF export shipped that one."""
    (data / "empty.model").write_bytes(b"")
    return ["--override", f"data.tokenizer_model={data / 'empty.model'}"], 2, None


def _fail(folder, prepare):
    data = folder / "data"
    data.mkdir()
    args, world, what = prepare(data)
    return fails_on_every_rank(folder, data, args, world=world), data, what


@pytest.fixture(scope="module")
def failed(request, tmp_path_factory):
    """test name -> future of (rank 0's error line, the case's data folder, what its test needs)."""
    from tests import background
    wanted = background.selected_names(request)
    return {name: background.submit_waiting(_fail, tmp_path_factory.mktemp(name[5:35]), prepare)
            for name, prepare in CASES.items() if name in wanted}


def test_missing_dataset(failed):
    line, data, _ = failed["test_missing_dataset"].result()
    assert f"dataset file {data / 'nope'}.bin not found" in line and "tools/preprocess_data.py" in line


def test_truncated_bin(failed):
    line, _, prefix = failed["test_truncated_bin"].result()
    assert f"{prefix}.bin is truncated" in line and "rebuild it with tools/preprocess_data.py" in line
    assert f"tools/inspect_data.py {prefix}" in line


def test_bin_of_another_dataset(failed):
    line, _, prefix = failed["test_bin_of_another_dataset"].result()
    assert f"{prefix}.bin does not match {prefix}.idx" in line and "rebuild it" in line


def test_index_that_is_not_an_index(failed):
    line, _, prefix = failed["test_index_that_is_not_an_index"].result()
    assert f"{prefix}.idx is not a Megatron indexed-dataset index" in line and "rebuild it" in line


def test_split_that_leaves_the_validation_split_empty(failed):
    """10 documents and the default split 969,30,1: documents 0..10 train, none for valid."""
    line, _, prefix = failed["test_split_that_leaves_the_validation_split_empty"].result()
    assert (f"config key 'data.split' = '969,30,1' gives the valid split of {prefix}.bin no documents "
            "(it has 10)") in line
    assert "--override data.split=90,10,0" in line


def test_token_ids_beyond_the_models_vocabulary(failed):
    line, _, prefix = failed["test_token_ids_beyond_the_models_vocabulary"].result()
    assert f"{prefix}.bin holds token id" in line and f"model.vocab_size = {VOCAB}" in line
    assert "re-tokenize it" in line


def test_tokenizer_larger_than_the_models_vocabulary(failed):
    line, _, _ = failed["test_tokenizer_larger_than_the_models_vocabulary"].result()
    assert "'model.vocab_size' = 4096 is smaller than the vocabulary of the tokenizer" in line
    assert "--override model.vocab_size=8000" in line


def test_tokenizer_file_that_is_not_a_sentencepiece_model(failed):
    line, data, _ = failed["test_tokenizer_file_that_is_not_a_sentencepiece_model"].result()
    assert f"tokenizer model {data / 'tok.model'} is not a sentencepiece model" in line
    assert "tools/train_tokenizer.py" in line


def test_tokenizer_file_missing(failed):
    line, data, _ = failed["test_tokenizer_file_missing"].result()
    assert f"config key 'data.tokenizer_model': {data / 'nope.model'} not found" in line
    assert "tools/train_tokenizer.py" in line


def test_index_cache_folder_that_cannot_be_created(failed):
    line, _, cache = failed["test_index_cache_folder_that_cannot_be_created"].result()
    assert f"cannot create the sample-index cache folder {cache}" in line and "data.cache_dir" in line


def test_another_tokenizer_with_the_bundled_data_is_refused(failed):
    """It was silently ignored: the run trained with the bundled tokenizer, its saved config
    named the other file, and an HF export shipped that one."""
    line, data, _ = failed["test_another_tokenizer_with_the_bundled_data_is_refused"].result()
    assert (f"config key 'data.tokenizer_model' = {data / 'empty.model'} is not the tokenizer the bundled data "
            "(data.paths 'embedded') was tokenized with") in line
    assert "data.tokenizer_model=embedded" in line and "--data-path" in line


def test_the_bundled_tokenizer_under_another_name_is_used_and_recorded(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    from megatron_sffn.data.assets import default_tokenizer_path
    from .runs import read_meta, run
    copy = data / "tok.model"
    shutil.copyfile(default_tokenizer_path(), copy)
    run_dir = tmp_path / "run"
    out = run(1, ARGS + ["--run-dir", str(run_dir), "--override", f"data.tokenizer_model={copy}"],
              str(tmp_path / "logs"))
    banner = next(line for line in out.splitlines() if line.startswith("data       "))
    assert banner.endswith(f"| tokenizer {copy}") and "corpus_text_document" in banner
    assert "speed      compile: off (auto, no CUDA) | CUDA graphs: off (auto: no CUDA)" in out
    meta = read_meta(str(run_dir), "step00000002")
    assert meta["config"]["training"]["compile"] is False and meta["config"]["training"]["cuda_graphs"] is False
    assert meta["data"]["tokenizer"] == str(copy) and meta["config"]["data"]["tokenizer_model"] == str(copy)
    assert meta["data"]["paths"][0].endswith("corpus_text_document")
