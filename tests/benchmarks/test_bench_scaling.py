"""benchmarks/bench_scaling.py's traffic counting, and what sequence parallelism moves.

The wire bytes of one collective follow the ring algorithm (payload_and_wire); a real
2-rank run of the smoke model then shows the structured bottleneck at work under sequence
parallelism: a lowrank model moves fewer tensor-group bytes than the dense one.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "benchmarks"))
from bench_scaling import payload_and_wire  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_wire_bytes_follow_the_ring_algorithm():
    full, shard = torch.zeros(1000), torch.zeros(250)
    assert payload_and_wire("all_reduce", (full,), 4) == (4000, 2 * 0.75 * 4000)
    assert payload_and_wire("all_gather_into_tensor", (full, shard), 4) == (4000, 0.75 * 4000)
    assert payload_and_wire("all_gather_single", (), 4, {"output_tensor": full, "input_tensor": shard}) == \
        (4000, 0.75 * 4000)
    assert payload_and_wire("reduce_scatter_single", (shard, full), 4) == (4000, 0.75 * 4000)
    assert payload_and_wire("send", (full,), 1) == (4000, 4000.0)
    assert payload_and_wire("all_reduce", (full,), 1) == (4000, 0.0)


@pytest.mark.slow
def test_sequence_parallel_lowrank_moves_less_than_dense(tmp_path):
    from tests import background
    wire, started = {}, {}
    for kind in ("dense", "lowrank"):   # both started at once (tests/background.py), checked in turn
        out = tmp_path / f"{kind}.json"
        extra = ["--override", "model.ffn.rank=null"] if kind == "dense" else []
        started[kind] = background.start([sys.executable, "benchmarks/bench_scaling.py", "--smoke", "--sweep",
                                          "2x1x1,2x1x1sp", "--override", "self_guided.enabled=false", "--override",
                                          f"model.ffn.kind={kind}", *extra, "--out", str(out)], 900, ROOT)
    for kind in ("dense", "lowrank"):
        out = tmp_path / f"{kind}.json"
        proc = started[kind].result()
        assert proc.returncode == 0, proc.stderr[-3000:]
        for record in json.loads(out.read_text()):
            assert record["layout"]["tensor"] == 2
            wire[kind, record["layout"]["sequence_parallel"]] = record["wire_bytes_per_step_rank0"]["tensor"]
    # the structured FFN's collectives carry T x r instead of T x d, with and without SP
    assert wire["lowrank", True] < 0.9 * wire["dense", True]
    assert wire["lowrank", False] < 0.9 * wire["dense", False]
    # SP adds the backward re-gather of d-wide inputs and the replicated gradients' sums,
    # never more than the forward and backward activations themselves
    assert wire["dense", False] <= wire["dense", True] <= 1.5 * wire["dense", False]


def test_profile_writes_the_kernel_table_and_the_hosts_python(tmp_path):
    """--profile on an emulated rank (CPU): the op table after the busy/idle summary, and one
    more step under cProfile whose table names the engine's step and the blocks' forward."""
    table = tmp_path / "p.txt"
    model = ["model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
             "model.seq_length=16", "model.vocab_size=256", "model.ffn.rank=8", "self_guided.enabled=false",
             "training.compile=false", "training.micro_batch_size=1", "training.global_batch_size=2",
             "parallel.tensor=2", "parallel.sequence_parallel=true"]
    overrides = [arg for o in model for arg in ("--override", o)]
    proc = subprocess.run([sys.executable, "tools/emulate_rank.py", "--world", "2", "--", "benchmarks/bench_scaling.py",
                           "--config", "configs/tiny_demo.json", *overrides, "--steps", "1", "--warmup", "1",
                           "--profile", str(table), "--profile-steps", "1", "--out", str(tmp_path / "r.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = table.read_text()
    assert "1 steps" in text and "per step: wall" in text and "Self CPU" in text
    python = (tmp_path / "p_python.txt").read_text()
    assert "Ordered by: internal time" in python and "Ordered by: cumulative time" in python
    assert "train_batch" in python and "block.py" in python
