"""experiments/sweep/records.py reads runs back from their own folders, also those written before the
sweep moved out of tools/ (the H100 runs behind docs/results_50m, committed as a tarball)."""
import os
import tarfile

import pytest

from experiments.sweep import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARBALL = os.path.join(ROOT, "benchmarks", "results", "h100_2026-11-23", "sweep_long_runs.tar.gz")


def test_runs_recorded_before_the_move_are_read_back_as_reported(tmp_path):
    with tarfile.open(TARBALL) as tar:
        tar.extractall(tmp_path, filter="data")
    row = records.summarize(str(tmp_path / "runs" / "sweep_long" / "lowrank_32"))
    assert row["config"] == "configs/sweep/sweep_lowrank_32.json"          # the old path, still found
    assert (row["status"], row["setting"], row["seed"], row["scale"]) == ("ok", "lowrank_32", 1234, 1)
    assert row["val_loss"] == pytest.approx(2.8468, abs=1e-4)                # docs/results_50m: 17.23 PPL
    assert row["steps"] == 768 and row["tokens"] == 768 * 65536
    assert row["train_flops"] == pytest.approx(9.559e15, rel=1e-3)
    assert [p[0] for p in row["val_curve"]] == list(range(96, 769, 96))       # every 96 steps
