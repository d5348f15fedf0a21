"""benchmarks/bench_data.py on CPU with a small corpus and the bundled tokenizer (Megatron-LM not
given, so only our preprocessing is timed): preprocessing, the sample-index build and the loader
land in the JSON."""
import json


def test_small_corpus_times_preprocessing_index_and_loader(early_commands):
    # the command (200 documents of the bundled corpus) is started by tests/benchmarks/conftest.py
    folder, _, started = early_commands["data"]
    out = folder / "data.json"
    proc = started.result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    (run,) = data["preprocess"]
    assert run["tool"] == "megatron_sffn" and run["workers"] == 1 and run["tokens_per_s"] > 0
    assert data["index_build"]["num_samples"] == 200 and data["index_build"]["build_s"] > 0
    assert data["loader"]["micro_batch"] == 2 and data["loader"]["mean_ms"] > 0
