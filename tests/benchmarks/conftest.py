"""The single-process smoke commands of the small benchmark modules (bench_data, bench_decode,
bench_fp8, bench_ledger, bench_optimizer), started together when the first of their tests runs,
two at a time (tests/background.py): each is one process that keeps one core busy, and their
tests only read what they wrote. Each test checks its own command exactly as before; the
command, environment, capture and timeout are the ones the test ran itself.

test_bench_host_overhead.py's timing comparison, the next module, waits until they are done."""
import gzip
import os
import sys

import pytest

from tests import background
from tests.benchmarks.common import ROOT, base_env, start, start_script

# (module, test) -> the command's name
EARLY = {
    ("test_bench_data.py", "test_small_corpus_times_preprocessing_index_and_loader"): "data",
    ("test_bench_decode.py", "test_smoke_times_every_case_and_pre_merge_keeps_the_tokens"): "decode",
    ("test_bench_fp8.py", "test_smoke_times_every_case_in_bf16_and_both_recipes"): "fp8",
    ("test_bench_fp8.py", "test_without_fp8_tensor_cores_it_is_one_error"): "fp8_error",
    ("test_bench_ledger.py", "test_smoke_ledger_has_both_sides_and_adds_up"): "ledger",
    ("test_bench_optimizer.py", "test_smoke_run_writes_every_case"): "optimizer",
}


def _start(name, folder):
    """Start command `name` writing into `folder`: (its args or None, future of its run)."""
    if name == "data":
        corpus = folder / "small.jsonl"
        with gzip.open(os.path.join(ROOT, "megatron_sffn", "assets", "corpus.jsonl.gz"), "rt") as f:
            corpus.write_text("".join(line for _, line in zip(range(200), f)))
        return None, start([sys.executable, "benchmarks/bench_data.py", "--input", str(corpus), "--workers", "1",
                            "--seq-length", "64", "--micro-batch", "2", "--num-samples", "200", "--json",
                            str(folder / "data.json")], 600, env=base_env())
    if name == "decode":
        args = ["--smoke", "--out", folder / "decode.json"]
        return args, start_script("bench_decode.py", args)
    if name == "fp8":
        args = ["--smoke", "--out", folder / "fp8.json"]
        return args, start_script("bench_fp8.py", args)
    if name == "fp8_error":
        env = base_env()
        env.pop("MEGATRON_SFFN_FP8_ON_CPU", None)
        return None, start([sys.executable, "benchmarks/bench_fp8.py", "--tokens", "16"], 300, env=env)
    if name == "ledger":
        args = ["--smoke", "--out", folder / "ledger.json"]
        return args, start_script("bench_ledger.py", args, timeout=300)
    assert name == "optimizer"
    return None, start([sys.executable, "benchmarks/bench_optimizer.py", "--smoke", "--steps", "2", "--warmup", "1",
                        "--out", str(folder / "opt.json")], 600, env=base_env({"MASTER_PORT": "29547"}))


@pytest.fixture(scope="session")
def early_commands(request, tmp_path_factory):
    """name -> (its folder, its args or None, future of its run), for the selected tests of EARLY."""
    wanted = {EARLY[key] for key in ((os.path.basename(str(item.path)), item.originalname)
                                      for item in request.session.items) if key in EARLY}
    started = {}
    for name in EARLY.values():
        if name in wanted:
            folder = tmp_path_factory.mktemp(name)
            started[name] = (folder, *_start(name, folder))
    return started


@pytest.fixture
def cores_to_itself():
    """For a test that compares times it measures: every background command has finished first."""
    background.wait_idle()
