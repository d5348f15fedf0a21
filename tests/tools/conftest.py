"""Session fixtures: the trained runs and conversions several tools tests read (each made once)."""
import os

import pytest

from .common import DENSE, LOWRANK, run


def _convert(argv):
    from tools.convert_checkpoint import main
    code = main([str(a) for a in argv])
    assert code == 0, f"convert_checkpoint {argv} exited {code}"


@pytest.fixture(scope="session")
def run22(tmp_path_factory):
    """The lowrank self-guided run in (tensor 2, pipeline 2): checkpoints at steps 2 and 4."""
    run_dir = str(tmp_path_factory.mktemp("run22"))
    run(4, LOWRANK + ["--run-dir", run_dir, "--tensor-parallel", "2", "--pipeline-parallel", "2"],
        os.path.join(run_dir, "logs"))
    return run_dir


@pytest.fixture(scope="session")
def consolidated2(run22, tmp_path_factory):
    """Step 2 of run22 (guides still present), consolidated with its Adam moments."""
    out = str(tmp_path_factory.mktemp("consolidated") / "step2")
    _convert(["--load", os.path.join(run22, "checkpoints", "step00000002"), "--save", out, "--to", "consolidated"])
    return out


@pytest.fixture(scope="session")
def resumed(consolidated2, tmp_path_factory):
    """consolidated2 reshaped to (tensor 1, pipe 1, data 2, ZeRO 2) and to (tensor 1, pipe 2), each
    resumed to the end through the launcher: {"1x1": run folder, "1x2": run folder}."""
    root = tmp_path_factory.mktemp("reshaped")
    layouts = {"1x1": ["--tensor-parallel", 1, "--pipeline-parallel", 1, "--data-parallel", 2, "--zero-stage", 2],
               "1x2": ["--tensor-parallel", 1, "--pipeline-parallel", 2, "--data-parallel", 1]}
    runs = {}
    for name, flags in layouts.items():
        run_dir = str(root / name)
        _convert(["--load", consolidated2, "--save", run_dir, "--to", "deepspeed", *flags])
        run(2, ["--config", os.path.join(run_dir, "config.json")], os.path.join(run_dir, "logs"))
        runs[name] = run_dir
    return runs


@pytest.fixture(scope="session")
def consolidated4(resumed, tmp_path_factory):
    """The final step of the (1, 2) resumed run, consolidated (guides dropped by then)."""
    out = str(tmp_path_factory.mktemp("consolidated") / "step4")
    _convert(["--load", resumed["1x2"], "--save", out, "--to", "consolidated"])
    return out


@pytest.fixture(scope="session")
def dense_run(tmp_path_factory):
    """A dense Llama-shaped model trained 2 steps on one rank."""
    run_dir = str(tmp_path_factory.mktemp("dense"))
    run(1, DENSE + ["--run-dir", run_dir], os.path.join(run_dir, "logs"))
    return run_dir
