"""A checkpoint that cannot be resumed stops launchers/pretrain.py before the engine is built:
one line from rank 0 naming the checkpoint and what to do, exit code 2, and the run folder
byte for byte as it was. Rows of docs/errors.md.

The checkpoint is a real one (the session's `dense_run`, 2 steps on one rank), copied and
damaged for each case, then resumed through the launcher.
"""
import os
import shutil

import pytest

from tests.e2e.runs import Ranks

from .common import DENSE
from tests.disk_state import snapshot

pytestmark = pytest.mark.slow



def resume_fails(tmp_path, dense_run, damage=None, extra=()):
    """Copy the run, damage the copy, resume it: exit 2, one error line, nothing changed."""
    run_dir = tmp_path / "run"
    shutil.copytree(dense_run, run_dir, ignore=shutil.ignore_patterns("logs"))
    if damage:
        damage(run_dir)
    before = snapshot(run_dir)
    ranks = Ranks(1, DENSE + ["--run-dir", str(run_dir), *extra], str(tmp_path / "logs"))
    codes, out = ranks.wait(timeout=300)
    assert codes == [2], out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out[-4000:]
    assert snapshot(run_dir) == before
    return errors[0]


def test_latest_names_a_checkpoint_that_is_missing(dense_run, tmp_path):
    def damage(run_dir):
        (run_dir / "checkpoints" / "latest").write_text("step00000009")
    line = resume_fails(tmp_path, dense_run, damage)
    assert "latest names checkpoint 'step00000009'" in line and "fix 'latest' or remove it" in line


def test_truncated_checkpoint_metadata(dense_run, tmp_path):
    def damage(run_dir):
        meta = run_dir / "checkpoints" / "step00000002" / "meta.json"
        meta.write_text(meta.read_text()[:40])
    line = resume_fails(tmp_path, dense_run, damage)
    assert "cannot read checkpoint metadata" in line and "step00000002/meta.json" in line


def test_truncated_checkpoint_file(dense_run, tmp_path):
    """Found before the engine is built: the zip index of a torch file is at its end."""
    target = os.path.join("checkpoints", "step00000002", "mp_rank_00_model_states.pt")

    def damage(run_dir):
        os.truncate(run_dir / target, os.path.getsize(run_dir / target) // 2)
    line = resume_fails(tmp_path, dense_run, damage)
    assert f"{target} is truncated or not a torch file" in line
    assert "resume from an earlier checkpoint" in line and "new --run-dir" in line


def test_checkpoint_of_another_model(dense_run, tmp_path):
    line = resume_fails(tmp_path, dense_run, extra=["--override", "model.num_layers=3"])
    assert "was written with a different 'model' config (model.num_layers: saved 2, now 3)" in line
    assert "use a new --run-dir" in line


def test_checkpoint_of_the_other_optimizer_implementation(dense_run, tmp_path):
    line = resume_fails(tmp_path, dense_run, extra=["--precision", "bf16", "--optimizer-implementation", "fused"])
    assert "optimizer.implementation deepspeed; this run is" in line and "--optimizer-implementation fused" in line
    assert "tools/convert_checkpoint.py" in line
