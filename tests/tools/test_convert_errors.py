"""Bad input to tools/convert_checkpoint.py: one line on stderr naming the path or flag, exit
code 2, and no output folder (complete or partial) left behind."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tools.convert_checkpoint import main

from .common import ROOT, call, synthetic_consolidated


def _fails(argv, capsys, *needles):
    code, out, err = call(main, argv, capsys)
    assert code == 2, (code, out, err)
    line = err.strip()
    assert line.startswith("error: ") and "\n" not in line, err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _no_output(path):
    assert not os.path.exists(path) and not os.path.exists(str(path) + ".partial")


def test_missing_checkpoint_from_the_command_line(tmp_path):
    missing = tmp_path / "nope"
    proc = subprocess.run([sys.executable, "tools/convert_checkpoint.py", "--load", str(missing), "--save",
                           str(tmp_path / "out"), "--to", "consolidated"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {missing} does not exist"
    _no_output(tmp_path / "out")


def test_not_a_checkpoint_and_partial_ones(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _fails(["--load", tmp_path / "empty", "--save", tmp_path / "o", "--to", "hf"], capsys, "is not a checkpoint")
    step = tmp_path / "run" / "checkpoints" / "step00000004"
    step.mkdir(parents=True)
    (step / "mp_rank_00_model_states.pt").write_bytes(b"")
    _fails(["--load", step, "--save", tmp_path / "o", "--to", "consolidated"], capsys, str(step),
           "meta.json is missing")
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step00000008")
    _fails(["--load", tmp_path / "run", "--save", tmp_path / "o", "--to", "consolidated"], capsys,
           "step00000008", "partial")
    synthetic_consolidated(str(tmp_path / "c"))
    os.remove(tmp_path / "c" / "meta.json")
    _fails(["--load", tmp_path / "c", "--save", tmp_path / "o", "--to", "hf"], capsys, "meta.json is missing")
    _no_output(tmp_path / "o")


def test_layout_that_does_not_divide_the_model(tmp_path, capsys):
    synthetic_consolidated(str(tmp_path / "c"))   # 4 heads, global batch 8, micro batch 2
    out = tmp_path / "o"
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "deepspeed", "--tensor-parallel", 3], capsys,
           "--tensor-parallel 3", "'parallel.tensor' = 3 must divide 'model.num_heads' = 4")
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "deepspeed", "--data-parallel", 3], capsys,
           "--data-parallel 3", "training.global_batch_size")
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "deepspeed", "--pipeline-parallel", 2,
            "--zero-stage", 2], capsys, "--zero-stage 2", "pipeline")
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "deepspeed", "--pipeline-parallel", 3], capsys,
           "'parallel.pipeline' = 3 exceeds 'model.num_layers' = 2")
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "consolidated", "--tensor-parallel", 2], capsys,
           "--tensor-parallel applies to --to deepspeed only")
    _no_output(out)


def test_sizes_below_one_and_non_positive_timeouts_are_named_not_defaulted(tmp_path, capsys):
    """--tensor-parallel 0 used to mean 'the source's' and convert (exit 0); a negative --timeout
    started the ranks and stopped them at once."""
    synthetic_consolidated(str(tmp_path / "c"))
    out = tmp_path / "o"
    for flag in ("--tensor-parallel", "--pipeline-parallel", "--data-parallel"):
        _fails(["--load", tmp_path / "c", "--save", out, "--to", "deepspeed", flag, 0], capsys,
               f"{flag} must be >= 1, got 0")
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "deepspeed", "--timeout", -5], capsys,
           "--timeout must be positive seconds, got -5")
    _fails(["--load", tmp_path / "c", "--save", out, "--to", "consolidated", "--timeout", 0], capsys,
           "--timeout must be positive seconds, got 0")
    _no_output(out)


def test_config_that_does_not_match_the_weights(tmp_path, capsys):
    synthetic_consolidated(str(tmp_path / "c"))
    config = json.load(open(tmp_path / "c" / "config.json"))
    config["model"]["ffn"]["rank"] = 4
    json.dump(config, open(tmp_path / "c" / "config.json", "w"))
    _fails(["--load", tmp_path / "c", "--save", tmp_path / "o", "--to", "deepspeed"], capsys,
           str(tmp_path / "c"), "blocks.1.ffn.fc1.structure", "mismatched config")
    _fails(["--load", tmp_path / "c", "--save", tmp_path / "h", "--to", "hf"], capsys, "mismatched config")
    _no_output(tmp_path / "o")
    _no_output(tmp_path / "h")


def test_existing_output_weights_only_source_and_guided_export(tmp_path, capsys):
    synthetic_consolidated(str(tmp_path / "c"))
    (tmp_path / "taken").mkdir()
    _fails(["--load", tmp_path / "c", "--save", tmp_path / "taken", "--to", "deepspeed"], capsys,
           f"--save {tmp_path / 'taken'} already exists")
    assert os.listdir(tmp_path / "taken") == []
    synthetic_consolidated(str(tmp_path / "w"), optimizer=False)
    _fails(["--load", tmp_path / "w", "--save", tmp_path / "o", "--to", "deepspeed"], capsys,
           "holds no optimizer state")
    synthetic_consolidated(str(tmp_path / "g"), guided=True, step=3)   # guided phase: 4 of 8 steps
    _fails(["--load", tmp_path / "g", "--save", tmp_path / "o", "--to", "hf"], capsys,
           "inside the self-guided phase", "step 4 or later")
    synthetic_consolidated(str(tmp_path / "x"), num_kv_heads=2)   # layernorm + gelu with GQA: no HF class
    _fails(["--load", tmp_path / "x", "--save", tmp_path / "o", "--to", "hf"], capsys,
           "no transformers architecture")
    _no_output(tmp_path / "o")


@pytest.mark.parametrize("to", ["consolidated", "deepspeed", "hf"])
def test_save_under_a_file_is_one_line_before_any_work(to, tmp_path, capsys):
    """It was a FileExistsError traceback, exit 1."""
    from tests.disk_state import snapshot
    synthetic_consolidated(str(tmp_path / "c"))
    (tmp_path / "afile").write_text("a file")
    before = snapshot(tmp_path)
    _fails(["--load", tmp_path / "c", "--save", tmp_path / "afile" / "sub", "--to", to], capsys,
           f"--save {tmp_path / 'afile' / 'sub'} cannot be created: {tmp_path / 'afile'} is a file, not a folder")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_partial_or_damaged_deepspeed_checkpoint_is_named(dense_run, tmp_path, capsys):
    """A rank's file missing is found before any process starts; a damaged one by the
    conversion rank that reads it, which stops and reports it."""
    step = tmp_path / "checkpoints" / "step00000002"
    shutil.copytree(os.path.join(dense_run, "checkpoints", "step00000002"), step)
    os.rename(step / "zero_pp_rank_0_mp_rank_00_optim_states.pt", tmp_path / "optim.pt")
    out = tmp_path / "o"
    _fails(["--load", step, "--save", out, "--to", "consolidated"], capsys, str(step), "partial",
           "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    os.rename(tmp_path / "optim.pt", step / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    (step / "mp_rank_00_model_states.pt").write_bytes(b"not a checkpoint")
    _fails(["--load", step, "--save", out, "--to", "consolidated"], capsys, str(step), "partial or does not fit")
    _no_output(out)
