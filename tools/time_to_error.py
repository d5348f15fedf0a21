#!/usr/bin/env python
"""Seconds from the command to the error, for every bad input of launchers/pretrain.py.

    python tools/time_to_error.py --out benchmarks/results/cpu2_2026-12-06/time_to_error.json
    python tools/time_to_error.py --cases config-missing missing-dataset --processes 2

Each case of docs/errors.md's launcher tables (configs and flags, data and tokenizer,
checkpoints at resume, a stale JIT build lock) is run as a user runs the demo,
`deepspeed --num_accelerators N launchers/pretrain.py ...` (CPU, gloo), on real damaged
files made in a temporary folder, and timed from the start of the command to its exit.
Recorded per case: seconds, exit code, how many `error:` lines were printed (1 is right), and
whether any rank got as far as DeepSpeed's JIT op build (which comes with the rendezvous):
an error one rank can find alone should be found before it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# a small lowrank model on the bundled corpus, two steps: the demo's shape, quick to start
BASE = ["--config", "configs/tiny_demo.json", "--override", "model.hidden_size=64", "--override", "model.num_layers=2",
        "--override", "model.seq_length=32", "--override", "model.ffn.rank=16", "--override",
        "model.ffn_hidden_size=256", "--override", "training.eval_iters=2", "--micro-batch-size", "4",
        "--global-batch-size", "16", "--train-steps", "2", "--eval-interval", "100", "--save-interval", "100"]
DENSE = ["--override", "model.ffn.kind=dense", "--override", "model.ffn.rank=null", "--override",
         "self_guided.enabled=false"]


class Workspace:
    """The temporary folder of one measurement: damaged data files, a real checkpoint."""

    def __init__(self, root: str, processes: int):
        self.root, self.processes = root, processes
        self._checkpoint: Optional[str] = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def file(self, name: str, content: bytes) -> str:
        with open(self.path(name), "wb") as f:
            f.write(content)
        return self.path(name)

    def dataset(self, name: str, documents: int = 200, low: int = 5, high: int = 7000, seed: int = 0) -> str:
        import numpy as np

        from megatron_sffn.data.indexed_dataset import IndexedDatasetWriter
        rng = np.random.default_rng(seed)
        prefix = self.path(name)
        with IndexedDatasetWriter(prefix, dtype=np.uint16) as writer:
            for _ in range(documents):
                writer.add_document(rng.integers(low, high, size=int(rng.integers(40, 200))))
        return prefix

    def checkpoint(self) -> str:
        """A 2-step dense run on this many processes, made once; each case damages a copy."""
        if self._checkpoint is None:
            run_dir = self.path("trained")
            code, _, output = launch(BASE + DENSE + ["--run-dir", run_dir], self.processes)
            if code != 0:
                raise RuntimeError(f"the checkpoint for the resume cases did not train:\n{output[-3000:]}")
            self._checkpoint = run_dir
        return self._checkpoint

    def damaged_run(self, name: str, damage: Optional[Callable[[str], None]] = None) -> str:
        run_dir = self.path(name)
        shutil.copytree(self.checkpoint(), run_dir)
        if damage:
            damage(os.path.join(run_dir, "checkpoints", "step00000002"))
        return run_dir


def _truncate(path: str, keep: float) -> None:
    os.truncate(path, int(os.path.getsize(path) * keep))


def _stale_lock(ws: Workspace) -> Tuple[List[str], Dict[str, str]]:
    from megatron_sffn.parallel.jit_cache import extensions_dir
    folder = ws.path("torch_extensions")
    source = extensions_dir()
    if os.path.isdir(source):   # the built op, so that only the lock is in the way
        shutil.copytree(source, folder)
    os.makedirs(os.path.join(folder, "deepspeed_shm_comm"), exist_ok=True)
    open(os.path.join(folder, "deepspeed_shm_comm", "lock"), "w").close()
    return BASE + ["--run-dir", ws.path("r")], {"TORCH_EXTENSIONS_DIR": folder}


# id -> (docs/errors.md table, build(workspace) -> argv or (argv, extra env))
CASES: Dict[str, Tuple[str, Callable]] = {
    # configs and flags
    "config-missing": ("configs", lambda ws: ["--config", ws.path("nope.json")]),
    "config-name-unknown": ("configs", lambda ws: ["--config", "1p3b_lowrnak.json"]),
    "config-not-json": ("configs", lambda ws: ["--config", ws.file("c.json", b"{ model: 1")]),
    "config-not-an-object": ("configs", lambda ws: ["--config", ws.file("c.json", b"[1, 2]")]),
    "config-unknown-key": ("configs", lambda ws: ["--config", ws.file("c.json", b'{"model": {"hiden_size": 8}}')]),
    "override-wrong-type": ("configs", lambda ws: BASE + ["--override", 'model.num_layers="twelve"']),
    "override-without-value": ("configs", lambda ws: BASE + ["--override", "model.num_layers"]),
    "override-unknown-key": ("configs", lambda ws: BASE + ["--override", "training.trian_steps=3"]),
    "flag-bad-value": ("configs", lambda ws: BASE + ["--train-steps", "ten"]),
    "flag-unknown": ("configs", lambda ws: BASE + ["--tensor-paralel", "2"]),
    "flag-config-missing": ("configs", lambda ws: ["--train-steps", "2"]),
    "flag-precision": ("configs", lambda ws: BASE + ["--precision", "fp8"]),
    "model-rank-negative": ("configs", lambda ws: BASE + ["--override", "model.ffn.rank=-3"]),
    "tensor-parallel-heads": ("configs", lambda ws: BASE + ["--tensor-parallel", "3"]),
    "layout-world-size": ("configs", lambda ws: BASE + ["--tensor-parallel", "4"]),
    "batch-not-divisible": ("configs", lambda ws: BASE + ["--global-batch-size", "12"]),
    "fused-with-fp16": ("configs", lambda ws: BASE + ["--optimizer-implementation", "fused", "--precision", "fp16"]),
    "cuda-graphs-without-compile": ("configs", lambda ws: BASE + ["--cuda-graphs"]),
    "cuda-graphs-with-deepspeed-optimizer": ("configs", lambda ws: BASE + [
        "--compile", "--cuda-graphs", "--optimizer-implementation", "deepspeed"]),
    "zero3-with-pipeline": ("configs", lambda ws: BASE + ["--pipeline-parallel", "2", "--zero-stage", "3"]),
    "split-malformed": ("configs", lambda ws: BASE + ["--override", "data.split=90,10"]),
    "train-steps-zero": ("configs", lambda ws: BASE + ["--train-steps", "0"]),
    "run-dir-a-file": ("configs", lambda ws: BASE + ["--run-dir", ws.file("afile", b"x")]),
    "layout-auto-without-memory": ("configs", lambda ws: BASE + ["--layout", "auto"]),
    # data and tokenizer
    "missing-dataset": ("data", lambda ws: BASE + ["--data-path", ws.path("nope")]),
    "truncated-bin": ("data", lambda ws: BASE + ["--data-path", _damaged_bin(ws)]),
    "bin-of-another-dataset": ("data", lambda ws: BASE + ["--data-path", _swapped_bin(ws)]),
    "index-that-is-not-an-index": ("data", lambda ws: BASE + ["--data-path", _not_an_index(ws)]),
    "split-leaves-validation-empty": ("data", lambda ws: BASE + ["--data-path", ws.dataset("small", documents=10)]),
    "token-ids-beyond-vocabulary": ("data", lambda ws: BASE + ["--data-path", ws.dataset("wide", low=100,
                                                                                          high=20000)]),
    "tokenizer-larger-than-vocabulary": ("data", lambda ws: BASE + [
        "--data-path", ws.dataset("c4k", high=4000), "--override", "model.vocab_size=4096"]),
    "tokenizer-not-sentencepiece": ("data", lambda ws: BASE + [
        "--data-path", ws.dataset("corpus"), "--override", f"data.tokenizer_model={ws.file('tok.model', b'no')}"]),
    "tokenizer-missing": ("data", lambda ws: BASE + [
        "--data-path", ws.dataset("corpus"), "--override", f"data.tokenizer_model={ws.path('nope.model')}"]),
    "tokenizer-other-than-bundled-data": ("data", lambda ws: BASE + [
        "--override", f"data.tokenizer_model={ws.file('empty.model', b'')}"]),
    "cache-dir-not-creatable": ("data", lambda ws: BASE + [
        "--data-path", ws.dataset("corpus"), "--override", f"data.cache_dir={ws.file('f', b'x')}/cache"]),
    # checkpoints at resume
    "latest-names-missing-tag": ("checkpoints", lambda ws: BASE + DENSE + ["--run-dir", ws.damaged_run(
        "r1", lambda step: open(os.path.join(step, "..", "latest"), "w").write("step00000009"))]),
    "truncated-meta": ("checkpoints", lambda ws: BASE + DENSE + ["--run-dir", ws.damaged_run(
        "r2", lambda step: _truncate(os.path.join(step, "meta.json"), 0.05))]),
    "truncated-model-states": ("checkpoints", lambda ws: BASE + DENSE + ["--run-dir", ws.damaged_run(
        "r3", lambda step: _truncate(os.path.join(step, "mp_rank_00_model_states.pt"), 0.5))]),
    "checkpoint-of-another-model": ("checkpoints", lambda ws: BASE + DENSE + [
        "--override", "model.num_layers=3", "--run-dir", ws.damaged_run("r4")]),
    "checkpoint-of-other-optimizer": ("checkpoints", lambda ws: BASE + DENSE + [
        "--precision", "bf16", "--optimizer-implementation", "fused", "--run-dir", ws.damaged_run("r5")]),
    # start-up that waits
    "stale-jit-build-lock": ("start-up", _stale_lock),
}


def _damaged_bin(ws: Workspace) -> str:
    prefix = ws.dataset("truncated")
    os.truncate(prefix + ".bin", os.path.getsize(prefix + ".bin") - 6)
    return prefix


def _swapped_bin(ws: Workspace) -> str:
    prefix, other = ws.dataset("swapped"), ws.dataset("swapped_other", documents=300, seed=1)
    shutil.copyfile(other + ".bin", prefix + ".bin")
    return prefix


def _not_an_index(ws: Workspace) -> str:
    prefix = ws.dataset("notidx")
    with open(prefix + ".idx", "r+b") as f:
        f.write(b"NOTANIDX!")
    return prefix


def launch(argv: List[str], processes: int, env: Optional[Dict[str, str]] = None, timeout: float = 600):
    """(exit code, seconds, output) of `deepspeed --num_accelerators N launchers/pretrain.py argv`."""
    from megatron_sffn.parallel.launch import free_port
    deepspeed = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or "deepspeed"
    command = [deepspeed, "--num_accelerators", str(processes), "--master_port", str(free_port()),
               "launchers/pretrain.py", *argv]
    full_env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT, **(env or {}))
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, time.perf_counter() - started, proc.stdout + proc.stderr


def measure(case: str, ws: Workspace) -> dict:
    table, build = CASES[case]
    built = build(ws)
    argv, env = built if isinstance(built, tuple) else (built, {})
    if "--run-dir" not in argv:
        argv = argv + ["--run-dir", ws.path(f"run-{case}")]
    code, seconds, output = launch(argv, ws.processes, env)
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    return {"case": case, "table": table, "seconds": round(seconds, 2), "exit_code": code,
            "error_lines": len(errors), "error": errors[0][:160] if errors else None,
            "reached_jit_build": "deepspeed_shm_comm_op built" in output}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES), metavar="CASE")
    ap.add_argument("--processes", type=int, default=2, help="ranks per launch (default 2, the demo's)")
    ap.add_argument("--out", help="write the results here as JSON")
    args = ap.parse_args(argv)
    if args.processes < 1:
        ap.error(f"--processes must be >= 1, got {args.processes}")
    results = []
    with tempfile.TemporaryDirectory(prefix="time_to_error_") as tmp:
        ws = Workspace(tmp, args.processes)
        baseline = launch(BASE + ["--train-steps", "1", "--no-save", "--run-dir", ws.path("ok")], args.processes)
        print(f"{'a good 1-step run (for scale)':<40} {baseline[1]:6.1f} s  exit {baseline[0]}", flush=True)
        for case in args.cases:
            row = measure(case, ws)
            results.append(row)
            print(f"{case:<40} {row['seconds']:6.1f} s  exit {row['exit_code']}  lines {row['error_lines']}"
                  f"{'  after the JIT build' if row['reached_jit_build'] else ''}", flush=True)
    report = {"command": f"deepspeed --num_accelerators {args.processes} launchers/pretrain.py ...",
              "load_average_1m_at_end": round(os.getloadavg()[0], 2),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "good_one_step_run_s": round(baseline[1], 2), "cases": results}
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
