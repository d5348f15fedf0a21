"""What the benchmark tests share: benchmarks/ and benchmarks/diagnostics/ on sys.path, tiny configs, a runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import Future

from tests import background
from tests.e2e.runs import ROOT, base_env

BENCHMARKS = os.path.join(ROOT, "benchmarks")
DIAGNOSTICS = os.path.join(BENCHMARKS, "diagnostics")
for folder in (DIAGNOSTICS, BENCHMARKS):
    if folder not in sys.path:
        sys.path.insert(0, folder)

TINY = os.path.join(ROOT, "configs", "tiny_demo.json")
SHAPE = ["model.hidden_size=32", "model.num_layers=3", "model.num_heads=4", "model.ffn_hidden_size=128",
         "model.seq_length=16", "self_guided.enabled=false"]
KINDS = {"dense": ["model.ffn.kind=dense", "model.ffn.rank=null"],
         "lowrank": ["model.ffn.rank=8"],
         "blockdense": ["model.ffn.kind=blockdense", "model.ffn.rank=16", "model.ffn.blocks=4"],
         "blockshuffle": ["model.ffn.kind=blockshuffle", "model.ffn.rank=null", "model.ffn.blocks=4"]}
LLAMA = ["model.norm=rmsnorm", "model.activation=swiglu", "model.bias=false", "model.tie_embeddings=false",
         "model.num_kv_heads=2", "model.ffn.first_layer_dense=false"]


def start(cmd, timeout: int, env=None) -> Future:
    """`subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)` started
    now in the background, two at a time (tests/background.py)."""
    return background.start(cmd, timeout, ROOT, env)


def script_command(script: str, args) -> list:
    """`python benchmarks/<script> args`, as run_script runs it."""
    return [sys.executable, os.path.join("benchmarks", script), *map(str, args)]


def start_script(script: str, args, timeout: int = 900) -> Future:
    """run_script's command started in the background (see `start`); finish_script(future, args) checks it."""
    return start(script_command(script, args), timeout, env=base_env())


def finish_script(future: Future, args):
    """What run_script returns for a command `start_script` started: asserts exit 0."""
    out = next(a for a, prev in zip(args, [None] + list(args)) if prev == "--out")
    proc = future.result()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return proc, json.load(f)


def run_script(script: str, args, timeout: int = 900):
    """(completed process, parsed --out JSON) of `python benchmarks/<script> args` (script: a path under
    benchmarks/, e.g. "diagnostics/bench_host_overhead.py"); asserts exit 0."""
    out = next(a for a, prev in zip(args, [None] + list(args)) if prev == "--out")
    proc = subprocess.run([sys.executable, os.path.join("benchmarks", script), *map(str, args)], cwd=ROOT,
                          env=base_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out) as f:
        return proc, json.load(f)
