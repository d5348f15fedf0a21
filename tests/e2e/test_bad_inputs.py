"""Bad configs, flags and checkpoints given to launchers/pretrain.py: one line on stderr naming
the input and what to do, exit code 2, and nothing on disk changed (no run folder, the inputs
untouched). The rows of docs/errors.md point here.

Config and flag errors are found before any process group exists, so main() is called in
this process; checkpoint errors need the distributed start, so those run as real ranks.
"""
import hashlib
import importlib.util
import json
import os
import shutil

import pytest

from .runs import ROOT, TINY, Ranks, run

ARGS = TINY + ["--train-steps", "2", "--eval-interval", "100", "--save-interval", "100"]


def _launcher_main():
    spec = importlib.util.spec_from_file_location("pretrain_launcher", os.path.join(ROOT, "launchers", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def snapshot(root):
    found = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return found


def one_error_line(err: str) -> str:
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    return line


def config_file(tmp_path, text):
    path = tmp_path / "c.json"
    path.write_text(text)
    return str(path)


# (id, extra argv or a function of tmp_path giving the argv, what the one line must say)
CASES = [
    ("config-missing", lambda t: ["--config", str(t / "nope.json")], "config file not found: {t}/nope.json"),
    ("config-not-json", lambda t: ["--config", config_file(t, "{ model: 1")], "is not valid JSON"),
    ("config-not-an-object", lambda t: ["--config", config_file(t, "[1, 2]")], "must hold a JSON object"),
    ("config-unknown-key", lambda t: ["--config", config_file(t, json.dumps({"model": {"hiden_size": 8}}))],
     "unknown config key 'model.hiden_size'"),
    ("override-wrong-type", ARGS + ["--override", 'model.num_layers="twelve"'],
     "config key 'model.num_layers' must be an integer, got 'twelve'"),
    ("override-without-value", ARGS + ["--override", "model.num_layers"], "must look like key.path=value"),
    ("override-unknown-key", ARGS + ["--override", "training.trian_steps=3"],
     "unknown config key 'training.trian_steps'"),
    ("flag-bad-value", ARGS + ["--train-steps", "ten"], "argument --train-steps: invalid int value: 'ten'"),
    ("flag-unknown", ARGS + ["--tensor-paralel", "2"], "unrecognized arguments: --tensor-paralel 2"),
    ("flag-config-missing", ["--train-steps", "2"], "the following arguments are required: --config"),
    ("flag-precision", ARGS + ["--precision", "fp8"],
     "config key 'training.precision' = 'fp8' must be one of bf16, fp16, fp32"),
    ("model-rank-negative", ARGS + ["--override", "model.ffn.rank=-3"],
     "config key 'model.ffn.rank' = -3 must be positive"),
    ("tensor-parallel-heads", ARGS + ["--tensor-parallel", "3"],
     "config key 'parallel.tensor' = 3 must divide 'model.num_heads' = 4"),
    ("layout-world-size", ARGS + ["--tensor-parallel", "2"],
     "world size 1 is not a multiple of parallel.tensor x parallel.pipeline = 2 x 1 = 2"),
    ("batch-not-divisible", ARGS + ["--global-batch-size", "10"],
     "config key 'training.global_batch_size' = 10 must be a multiple of training.micro_batch_size"),
    ("fused-with-fp16", ARGS + ["--optimizer-implementation", "fused", "--precision", "fp16"],
     "config key 'optimizer.implementation' = 'fused' needs 'training.precision' = bf16"),
    ("zero3-with-pipeline", ARGS + ["--pipeline-parallel", "2", "--zero-stage", "3"],
     "config key 'parallel.zero_stage' = 3 is not supported with pipeline parallelism"),
    ("split-malformed", ARGS + ["--override", "data.split=90,10"],
     "config key 'data.split' = '90,10' must be three numbers like '969,30,1'"),
    ("train-steps-zero", ARGS + ["--train-steps", "0"], "config key 'training.train_steps' = 0 must be positive"),
]


@pytest.mark.parametrize("argv, needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_launcher_rejects_bad_config_or_flag(argv, needle, tmp_path, capsys, monkeypatch):
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(key, raising=False)
    argv = argv(tmp_path) if callable(argv) else list(argv)
    run_dir = tmp_path / "run"
    before = snapshot(tmp_path)
    try:
        code = _launcher_main()(argv + ["--run-dir", str(run_dir)])
    except SystemExit as stop:     # argparse's own exit
        code = stop.code
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    line = one_error_line(err)
    assert needle.format(t=tmp_path) in line, line
    assert snapshot(tmp_path) == before and not run_dir.exists()


# -- checkpoints ----------------------------------------------------------------------------
ZERO0 = ARGS + ["--zero-stage", "0"]   # resumable on any number of ranks


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-rank run of 2 steps: checkpoints/step00000002 (ZeRO 0, DeepSpeed's optimizer, fp32)."""
    run_dir = str(tmp_path_factory.mktemp("trained") / "run")
    run(1, ZERO0 + ["--run-dir", run_dir], os.path.join(run_dir + "_logs"))
    return run_dir


def resume_fails(tmp_path, trained, damage, extra=(), world=1):
    """Copy the run, damage the copy, resume it: every rank exits 2, rank 0 alone prints one
    line, and the copy is byte for byte what it was before the attempt. Returns the line."""
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    damage(run_dir)
    before = snapshot(run_dir)
    ranks = Ranks(world, ZERO0 + ["--run-dir", str(run_dir), *extra], str(tmp_path / "logs"))
    codes, out = ranks.wait(timeout=300)
    assert codes == [2] * world, out[-4000:]
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in out, out[-4000:]
    assert all("error: " not in ranks.output(r) for r in range(1, world))
    assert snapshot(run_dir) == before
    return errors[0]


def _nothing(run_dir):
    pass


@pytest.mark.slow
def test_latest_names_a_checkpoint_that_is_missing(trained, tmp_path):
    def damage(run_dir):
        (run_dir / "checkpoints" / "latest").write_text("step00000009")
    line = resume_fails(tmp_path, trained, damage)
    assert "latest names checkpoint 'step00000009'" in line and "fix 'latest' or remove it" in line


@pytest.mark.slow
def test_truncated_checkpoint_metadata(trained, tmp_path):
    def damage(run_dir):
        meta = run_dir / "checkpoints" / "step00000002" / "meta.json"
        meta.write_text(meta.read_text()[:40])
    line = resume_fails(tmp_path, trained, damage)
    assert "cannot read checkpoint metadata" in line and "step00000002/meta.json" in line


@pytest.mark.slow
def test_truncated_checkpoint_file(trained, tmp_path):
    """Found before the engine is built (the zip index of a torch file is at its end)."""
    target = os.path.join("checkpoints", "step00000002", "mp_rank_00_model_states.pt")

    def damage(run_dir):
        os.truncate(run_dir / target, os.path.getsize(run_dir / target) // 2)
    line = resume_fails(tmp_path, trained, damage, world=2)
    assert f"{target} is truncated or not a torch file" in line
    assert "resume from an earlier checkpoint" in line and "new --run-dir" in line


@pytest.mark.slow
def test_checkpoint_of_another_model(trained, tmp_path):
    line = resume_fails(tmp_path, trained, _nothing, ["--override", "model.num_layers=2"])
    assert "was written with a different 'model' config (model.num_layers: saved 3, now 2)" in line
    assert "use a new --run-dir" in line


@pytest.mark.slow
def test_checkpoint_of_the_other_optimizer_implementation(trained, tmp_path):
    line = resume_fails(tmp_path, trained, _nothing, ["--precision", "bf16", "--optimizer-implementation", "fused"])
    assert "optimizer.implementation deepspeed; this run is" in line and "--optimizer-implementation fused" in line
    assert "tools/convert_checkpoint.py" in line
