"""benchmarks/bench_data.py on CPU with a small corpus and the bundled tokenizer (Megatron-LM not
given, so only our preprocessing is timed): preprocessing, the sample-index build and the loader
land in the JSON."""
import gzip
import json
import os
import subprocess
import sys

from tests.e2e.runs import ROOT, base_env


def test_small_corpus_times_preprocessing_index_and_loader(tmp_path):
    corpus = tmp_path / "small.jsonl"
    with gzip.open(os.path.join(ROOT, "megatron_sffn", "assets", "corpus.jsonl.gz"), "rt") as f:
        corpus.write_text("".join(line for _, line in zip(range(200), f)))
    out = tmp_path / "data.json"
    proc = subprocess.run([sys.executable, "benchmarks/bench_data.py", "--input", str(corpus), "--workers", "1",
                           "--seq-length", "64", "--micro-batch", "2", "--num-samples", "200", "--json", str(out)],
                          cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    (run,) = data["preprocess"]
    assert run["tool"] == "megatron_sffn" and run["workers"] == 1 and run["tokens_per_s"] > 0
    assert data["index_build"]["num_samples"] == 200 and data["index_build"]["build_s"] > 0
    assert data["loader"]["micro_batch"] == 2 and data["loader"]["mean_ms"] > 0
