"""tools/evaluate.py equals the training loop's validation loss on the same data."""
import json
import math

import pytest

from tools.evaluate import main

from .common import STEPS, call, relative, val_losses

pytestmark = pytest.mark.slow


def test_run_folder_equals_the_loops_validation_loss(dense_run, tmp_path, capsys):
    path = tmp_path / "eval.json"
    code, out, err = call(main, ["--load", dense_run, "--data-path", "embedded", "--json", path, "--no-progress"],
                          capsys)
    assert code == 0, err
    result = json.load(open(path))
    assert result["step"] == 2 and result["eval_iters"] == 2 and result["samples"] == 16
    assert relative(result["loss"], val_losses(dense_run)[2]) < 1e-5
    assert math.isclose(result["perplexity"], math.exp(result["loss"]))


def test_consolidated_equals_every_layouts_validation_loss(run22, resumed, consolidated4, tmp_path, capsys):
    path = tmp_path / "eval.json"
    code, _, err = call(main, ["--load", consolidated4, "--data-path", "embedded", "--json", path,
                               "--micro-batch-size", 8], capsys)
    assert code == 0, err
    loss = json.load(open(path))["loss"]
    for run_dir in (run22, resumed["1x1"], resumed["1x2"]):
        assert relative(loss, val_losses(run_dir)[STEPS]) < 1e-5


def test_missing_dataset_is_named(consolidated4, tmp_path, capsys):
    code, _, err = call(main, ["--load", consolidated4, "--data-path", tmp_path / "corpus"], capsys)
    assert code == 2 and f"{tmp_path / 'corpus'}.bin not found" in err
