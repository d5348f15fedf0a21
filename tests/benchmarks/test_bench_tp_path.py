"""benchmarks/diagnostics/bench_tp_path.py on a CPU: the tensor-parallel path of size 1 computes the
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
    cmd = [sys.executable, "benchmarks/diagnostics/bench_tp_path.py", "--config", "configs/1p3b_lowrank.json",
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


def test_real_tensor_parallel_two_ranks_equal_plain_and_a_hang_is_reported(tmp_path):
    out = tmp_path / "tp2.json"
    common = [sys.executable, "benchmarks/diagnostics/bench_tp_path.py", "--config", "configs/1p3b_lowrank.json",
              "--micro-batch-size", "2", "--steps", "2", "--warmup", "1", "--tensor-parallel", "2"]
    common += [f"--override={o}" for o in TINY]
    done = subprocess.run(common + ["--modes", "plain-eager", "tp-traced", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["tp-traced"]["tensor_parallel"] == 2 and rows["plain-eager"]["tensor_parallel"] == 1
    # tensor 2 with its real shards and collectives computes the plain model
    assert rows["tp-traced"]["first_loss"] == pytest.approx(rows["plain-eager"]["first_loss"], rel=1e-5)
    assert rows["tp-traced"]["graph_breaks"] == 0
    # the timed step that sees step 0's batch again (same weights) gives step 0's loss
    for row in rows.values():
        assert row["repeated_loss_max_drift"] <= 1e-5 * abs(row["first_loss"]), row
    # a mode that does not finish in --case-timeout is reported, not waited on forever
    hung = subprocess.run(common + ["--modes", "tp-eager", "--case-timeout", "1", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert hung.returncode == 0 and "HUNG after 1 s" in hung.stdout
    row = json.loads(out.read_text())["rows"][0]
    assert row["hung"] is True
    # every rank's output comes back, with the Python stacks each dumped before it was killed
    assert "--- rank 0 ---" in row["output_tail"] and "--- rank 1 ---" in row["output_tail"]
    assert row["output_tail"].count('File "') >= 2


def test_nocomm_mode_drops_only_the_collectives_and_profile_shows_them(tmp_path):
    out, prof = tmp_path / "nocomm.json", tmp_path / "prof"
    cmd = [sys.executable, "benchmarks/diagnostics/bench_tp_path.py", "--config", "configs/1p3b_lowrank.json",
           "--micro-batch-size", "2", "--steps", "1", "--warmup", "1", "--modes", "tp-eager", "tp-eager-nocomm", "--profile", str(prof), "--out", str(out)] + [f"--override={o}" for o in TINY]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    # on one rank every collective is the identity: the same loss without them
    assert rows["tp-eager-nocomm"]["first_loss"] == pytest.approx(rows["tp-eager"]["first_loss"], rel=1e-6)
    # the profiles: the table by host time, and a timeline with the tensor group's collectives
    # on the TP path and none without them
    import gzip
    assert "aten::mm" in (prof / "tp-eager.txt").read_text()

    def collectives(mode):
        trace = json.loads(gzip.open(prof / f"{mode}.trace.json.gz").read())
        return sum(e.get("name", "").startswith("c10d::") for e in trace["traceEvents"])

    assert collectives("tp-eager") > 0 and collectives("tp-eager-nocomm") == 0


def test_emulated_rank_holds_its_shards_and_the_bypass_is_what_compile_gives(tmp_path):
    """--emulate 2: rank 0 of a tensor group of two on the fake process group (its shards, the
    collectives moving nothing) beside the plain model; compiled, the functional collectives
    are called below autograd unless --keep-collective-autograd asks for torch's kernels."""
    common = [sys.executable, "benchmarks/diagnostics/bench_tp_path.py", "--config", "configs/1p3b_lowrank.json",
              "--micro-batch-size", "2", "--steps", "2", "--warmup", "1", "--emulate", "2"]
    common += [f"--override={o}" for o in TINY]
    out, kept = tmp_path / "emulated.json", tmp_path / "kept.json"
    done = subprocess.run(common + ["--modes", "plain-compiled", "tp-traced", "--profile", str(tmp_path / "prof"),
                                    "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["tp-traced"]["tensor_parallel"] == 2 and rows["tp-traced"]["emulated"]
    assert rows["tp-traced"]["graph_breaks"] == 0 and rows["tp-traced"]["collective_autograd_bypassed"]
    # the Python profile beside torch's: where the host's time goes, function by function
    assert "tottime" in (tmp_path / "prof" / "tp-traced.python.txt").read_text()
    done = subprocess.run(common + ["--modes", "tp-traced", "--keep-collective-autograd", "--out", str(kept)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = json.loads(kept.read_text())["rows"][0]
    assert row["collective_autograd_bypassed"] is False and row["graph_breaks"] == 0


@pytest.mark.parametrize("argv, message", [
    (["--emulate", "1"], "--emulate takes the tensor size"),
    (["--emulate", "2", "--tensor-parallel", "2"], "leave --tensor-parallel at 1"),
    (["--emulate", "2", "--modes", "tp-eager-nocomm"], "tp-eager-nocomm"),
    (["--inductor-config", "no_such_setting=1"], "torch._inductor.config setting"),
    (["--inductor-config", "combo_kernels=yes please"], "not a Python literal"),
])
def test_bad_flags_are_one_line_before_any_work(argv, message):
    done = subprocess.run([sys.executable, "benchmarks/diagnostics/bench_tp_path.py"] + argv, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
