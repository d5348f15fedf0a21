"""benchmarks/bench_tp_path_1gpu.py on a CPU: the tensor-parallel path of size 1 computes the
plain model, and only the traced compile keeps the blocks whole.

Tiny widths, the 1.3B lowrank config's 24 blocks and sequence parallelism, gloo on one rank.
"""
import json
import subprocess
import sys

import pytest

from tests.distributed.launcher import ROOT

pytestmark = pytest.mark.slow

TINY = ["model.hidden_size=64", "model.ffn_hidden_size=256", "model.ffn.rank=16", "model.seq_length=16",
        "model.num_heads=4", "model.num_kv_heads=4"]


def test_tensor_path_of_one_rank_equals_plain_and_traced_compile_has_no_breaks(tmp_path):
    out = tmp_path / "tp_path.json"
    cmd = [sys.executable, "benchmarks/bench_tp_path_1gpu.py", "--config", "configs/1p3b_lowrank.json",
           "--micro-batch-size", "2", "--steps", "2", "--warmup", "1", "--modes", "plain-eager", "tp-split",
           "tp-traced", "--out", str(out)] + [f"--override={o}" for o in TINY]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tp-traced" in done.stdout and "ms/block" in done.stdout  # the table
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"plain-eager", "tp-split", "tp-traced"}
    plain = rows["plain-eager"]["first_loss"]
    for mode in ("tp-split", "tp-traced"):
        assert rows[mode]["first_loss"] == pytest.approx(plain, rel=1e-5), mode
        assert rows[mode]["step_ms"] > 0 and rows[mode]["graphs"] > 0
    # the collectives outside the graphs break every block at each of them; traced, none
    assert rows["tp-split"]["graph_breaks"] >= 24
    assert rows["tp-traced"]["graph_breaks"] == 0
