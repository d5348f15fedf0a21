#!/usr/bin/env python
"""Data pipeline benchmark: preprocessing throughput (ours vs Megatron-LM's tool, same input,
workers and tokenizer), sample-index build time, and loader time per micro-batch against a
training step.

    python benchmarks/bench_data.py --input corpus.jsonl --tokenizer-model tok.model \\
        --workers 1 2 [--megatron-lm /path/to/Megatron-LM] [--json benchmarks/results/x.json]

Megatron-LM is optional: point --megatron-lm at a checkout to time its
tools/preprocess_data.py (run as it is, in a subprocess); its output is also compared byte
for byte with ours. Without --input the bundled corpus is used.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron_sffn.data import assets  # noqa: E402
from megatron_sffn.data.indexed_dataset import IndexedDataset  # noqa: E402


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def plain_jsonl(path: str, work: str) -> str:
    """Megatron's tool reads plain jsonl: decompress a .gz input once, outside the timing."""
    if not path.endswith(".gz"):
        return path
    out = os.path.join(work, "input.jsonl")
    with gzip.open(path, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    return out


def run_timed(cmd, env=None, cwd=None):
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{result.stderr[-3000:]}")
    return elapsed, result


def bench_ours(input_path, tokenizer, workers, work):
    prefix = os.path.join(work, f"ours_w{workers}")
    summary_path = prefix + ".json"
    wall, _ = run_timed([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"),
                         "--input", input_path, "--json-keys", "text", "--tokenizer-model", tokenizer,
                         "--output-prefix", prefix, "--workers", str(workers), "--append-eod",
                         "--no-progress", "--summary-json", summary_path])
    summary = json.load(open(summary_path))
    return {"tool": "megatron_sffn", "workers": workers, "wall_s": wall,
            "processing_s": summary["seconds"], "documents": summary["documents"],
            "tokens": summary["tokens"], "prefix": prefix + "_text_document"}


def bench_megatron(input_path, tokenizer, workers, work, megatron_lm):
    prefix = os.path.join(work, f"megatron_w{workers}")
    env = dict(os.environ)
    shim = os.path.join(work, "shim")
    os.makedirs(shim, exist_ok=True)
    # Megatron-LM's main branch uses typing.override (Python 3.12); on older Pythons give it
    # a no-op decorator. Nothing else of its code or environment is changed.
    with open(os.path.join(shim, "sitecustomize.py"), "w") as f:
        f.write("import typing\nif not hasattr(typing, 'override'):\n    typing.override = lambda f: f\n")
    env["PYTHONPATH"] = os.pathsep.join([shim, megatron_lm, env.get("PYTHONPATH", "")])
    wall, result = run_timed([sys.executable, os.path.join(megatron_lm, "tools", "preprocess_data.py"),
                              "--input", input_path, "--json-keys", "text",
                              "--tokenizer-type", "GPTSentencePieceTokenizer",
                              "--tokenizer-model", tokenizer, "--output-prefix", prefix,
                              "--workers", str(workers), "--append-eod", "--log-interval", "10000000"],
                             env=env, cwd=megatron_lm)
    startup = re.search(r"Time to startup: ([0-9.]+)", result.stdout + result.stderr)
    ds = IndexedDataset(prefix + "_text_document")
    return {"tool": "Megatron-LM", "workers": workers, "wall_s": wall,
            "startup_s": float(startup.group(1)) if startup else None,
            "documents": len(ds), "tokens": ds.num_tokens, "prefix": prefix + "_text_document"}


def same_files(a: str, b: str) -> bool:
    return all(open(a + ext, "rb").read() == open(b + ext, "rb").read() for ext in (".bin", ".idx"))


def bench_index_build(prefix, seq_length, num_samples, work):
    from megatron_sffn.data.gpt_dataset import build_gpt_datasets
    start = time.perf_counter()
    train, _, _ = build_gpt_datasets(prefix, None, "99,1,0", seq_length, 1234,
                                     num_samples=(num_samples, 0, 0), cache_dir=os.path.join(work, "cache"),
                                     show_progress=False)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    build_gpt_datasets(prefix, None, "99,1,0", seq_length, 1234, num_samples=(num_samples, 0, 0),
                       cache_dir=os.path.join(work, "cache"), show_progress=False)
    reload_s = time.perf_counter() - start
    result = {"num_samples": num_samples, "epochs": train.num_epochs,
              "document_index_entries": int(len(train.document_index)), "build_s": build_s,
              "cached_load_s": reload_s}
    try:  # Megatron-LM's C++ sample-index builder on the same document index, if installed
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from megatron.core.datasets import helpers
        from megatron_sffn.data.sample_index import build_sample_index
        sizes = np.asarray(IndexedDataset(prefix).sizes)
        doc_index = np.asarray(train.document_index)
        start = time.perf_counter()
        theirs = helpers.build_sample_idx(sizes, doc_index, seq_length, train.num_epochs,
                                          train.tokens_per_epoch, True, True)
        result["megatron_cpp_sample_index_s"] = time.perf_counter() - start
        start = time.perf_counter()
        ours = build_sample_index(sizes, doc_index, seq_length, train.num_epochs, train.tokens_per_epoch)
        result["ours_sample_index_s"] = time.perf_counter() - start
        result["sample_index_identical"] = bool(np.array_equal(ours, theirs))
    except ImportError:
        pass
    return train, result


def bench_loader(train, micro_batch, steps):
    import torch
    from megatron_sffn.data.sampler import ResumableSampler, micro_batch_tensors
    sampler = ResumableSampler(len(train), 0, micro_batch, 0, 1)
    times = []
    for i, indices in enumerate(sampler):
        if i >= steps:
            break
        start = time.perf_counter()
        inputs, labels = micro_batch_tensors(train, indices)
        times.append(time.perf_counter() - start)
    assert inputs.dtype == torch.int64
    times = np.array(times[5:]) * 1000
    return {"micro_batch": micro_batch, "seq_length": train.seq_length, "batches": len(times),
            "mean_ms": float(times.mean()), "p50_ms": float(np.median(times)),
            "p99_ms": float(np.percentile(times, 99)), "max_ms": float(times.max())}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=None, help="jsonl or jsonl.gz with a 'text' field (default: bundled corpus)")
    p.add_argument("--tokenizer-model", default=None, help="default: the bundled tokenizer")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--megatron-lm", default=None, help="a Megatron-LM checkout to compare against")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per setting, interleaved between the tools; the fastest is reported "
                        "(on a shared machine the others mostly measure the neighbours)")
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--num-samples", type=int, default=None,
                   help="training samples for the index build (default: 3 epochs of the data)")
    p.add_argument("--step-seconds", type=float, default=1.0,
                   help="GPU training step to compare the loader with (1.3B model, 8x1024 tokens, H100)")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    tokenizer = args.tokenizer_model or assets.default_tokenizer_path()
    source = args.input or assets.default_corpus_path()
    results = {"device": f"{cpu_name()}, {os.cpu_count()} cores (CPU only)",
               "python": platform.python_version(), "input": os.path.basename(source),
               "tokenizer": os.path.basename(tokenizer), "preprocess": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_") as work:
        input_path = plain_jsonl(source, work)
        results["input_bytes"] = os.path.getsize(input_path)
        for workers in args.workers:
            runs = []
            for _ in range(args.repeats):
                runs.append(bench_ours(input_path, tokenizer, workers, work))
                if args.megatron_lm:
                    runs.append(bench_megatron(input_path, tokenizer, workers, work, args.megatron_lm))
            for tool in ("megatron_sffn", "Megatron-LM"):
                mine = [r for r in runs if r["tool"] == tool]
                if mine:
                    best = dict(min(mine, key=lambda r: r["wall_s"]))
                    best["all_wall_s"] = [round(r["wall_s"], 3) for r in mine]
                    best["tokens_per_s"] = best["tokens"] / best["wall_s"]
                    best["tokens_per_s_per_worker"] = best["tokens_per_s"] / workers
                    best["docs_per_s"] = best["documents"] / best["wall_s"]
                    results["preprocess"].append(best)
            if args.megatron_lm:
                pair = [r for r in results["preprocess"] if r["workers"] == workers]
                results.setdefault("identical_output", {})[str(workers)] = same_files(pair[0]["prefix"], pair[1]["prefix"])
        prefix = results["preprocess"][0]["prefix"]
        ds = IndexedDataset(prefix)
        num_samples = args.num_samples or 3 * (ds.num_tokens // args.seq_length)
        train, results["index_build"] = bench_index_build(prefix, args.seq_length, num_samples, work)
        results["loader"] = bench_loader(train, args.micro_batch, steps=2000)
        results["loader"]["step_s"] = args.step_seconds
        results["loader"]["fraction_of_step"] = results["loader"]["mean_ms"] / 1000 / args.step_seconds
        for r in results["preprocess"]:
            r.pop("prefix", None)

    print(f"device: {results['device']}; input {results['input']} ({results['input_bytes'] / 1e6:.1f} MB)")
    print(f"{'tool':<14} {'workers':>7} {'wall s':>8} {'docs/s':>9} {'tokens/s':>11} {'tokens/s/worker':>16}")
    for r in results["preprocess"]:
        print(f"{r['tool']:<14} {r['workers']:>7} {r['wall_s']:>8.2f} {r['docs_per_s']:>9,.0f} "
              f"{r['tokens_per_s']:>11,.0f} {r['tokens_per_s_per_worker']:>16,.0f}")
    if "identical_output" in results:
        print(f"byte-identical .bin/.idx: {results['identical_output']}")
    ib = results["index_build"]
    print(f"index build: {ib['num_samples']:,} samples ({ib['epochs']} epochs, {ib['document_index_entries']:,} "
          f"document-index entries) in {ib['build_s']:.2f} s, cached load {ib['cached_load_s']:.3f} s")
    if "megatron_cpp_sample_index_s" in ib:
        print(f"sample index alone: ours {ib['ours_sample_index_s']:.3f} s, Megatron-LM C++ helper "
              f"{ib['megatron_cpp_sample_index_s']:.3f} s, identical: {ib['sample_index_identical']}")
    lo = results["loader"]
    print(f"loader: micro-batch {lo['micro_batch']}x{lo['seq_length'] + 1} mean {lo['mean_ms']:.3f} ms, "
          f"p99 {lo['p99_ms']:.3f} ms = {100 * lo['fraction_of_step']:.4f}% of a {lo['step_s']} s step")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
