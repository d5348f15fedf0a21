"""Bad configs and flags given to launchers/pretrain.py: one line on stderr naming the input
and what to do, exit code 2, and nothing on disk changed (no run folder, the inputs
untouched). Rows of docs/errors.md; bad checkpoints are in tests/tools/test_resume_errors.py.

These are found before any process group exists, so main() is called in this process.
"""
import importlib.util
import json
import os

import pytest

from .runs import ROOT, TINY
from tests.disk_state import snapshot

ARGS = TINY + ["--train-steps", "2", "--eval-interval", "100", "--save-interval", "100"]


def _launcher_main():
    spec = importlib.util.spec_from_file_location("pretrain_launcher", os.path.join(ROOT, "launchers", "pretrain.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main



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
     "config key 'training.precision' = 'fp8' must be one of bf16, fp16, fp32; FP8 GEMMs run on top of bf16: "
     "--precision bf16 --fp8"),
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
    ("cuda-graphs-without-compile", ARGS + ["--cuda-graphs"],
     "config key 'training.cuda_graphs' = true needs 'training.compile' = true (--compile)"),
    ("cuda-graphs-with-deepspeed-optimizer", ARGS + ["--compile", "--cuda-graphs", "--optimizer-implementation",
                                                     "deepspeed"],
     "config key 'training.cuda_graphs' = true needs the fused optimizer"),
    ("zero3-with-pipeline", ARGS + ["--pipeline-parallel", "2", "--zero-stage", "3"],
     "config key 'parallel.zero_stage' = 3 is not supported with pipeline parallelism"),
    ("split-malformed", ARGS + ["--override", "data.split=90,10"],
     "config key 'data.split' = '90,10' must be three numbers like '969,30,1'"),
    ("train-steps-zero", ARGS + ["--train-steps", "0"], "config key 'training.train_steps' = 0 must be positive"),
    ("cpp-wrapper-without-compile", ARGS + ["--no-compile", "--override", "training.cpp_wrapper=true"],
     "config key 'training.cpp_wrapper' = true needs 'training.compile' = true or \"auto\""),
    ("compile-not-a-choice", ARGS + ["--override", "training.compile=sometimes"],
     "config key 'training.compile' = 'sometimes' must be true, false or \"auto\""),
    ("gpu-memory-without-layout-auto", ARGS + ["--gpu-memory-gb", "80"],
     "argument --gpu-memory-gb: applies to --layout auto only"),
    ("gpu-memory-not-positive", ARGS + ["--layout", "auto", "--gpu-memory-gb", "0"],
     "argument --gpu-memory-gb: must be positive, got 0"),
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


@pytest.mark.parametrize("where, needle", [
    ("afile", "= {p} is a file, not a folder"),
    ("afile/sub/run", "= {p} cannot be created: {t}/afile is not a writable folder"),
])
def test_run_dir_that_cannot_be_a_folder_is_one_line_before_start_up(where, needle, tmp_path, capsys, monkeypatch):
    """It was a FileExistsError traceback from rank 0 once start-up was under way."""
    for key in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        monkeypatch.delenv(key, raising=False)
    (tmp_path / "afile").write_text("not a folder")
    path = tmp_path / where
    before = snapshot(tmp_path)
    code = _launcher_main()(ARGS + ["--run-dir", str(path)])
    assert code == 2
    line = one_error_line(capsys.readouterr().err)
    assert needle.format(p=path, t=tmp_path) in line and "output.run_dir" in line, line
    assert snapshot(tmp_path) == before


DEEPSPEED_CASES = [
    ("config-name-unknown", ["--config", "1p3b_lowrnak.json"],
     "config file not found: 1p3b_lowrnak.json; closest shipped configs"),
    ("flag-unknown", ARGS + ["--tensor-paralel", "2"], "unrecognized arguments: --tensor-paralel 2"),
    ("config-value", ARGS + ["--override", "model.ffn.rank=-3"], "config key 'model.ffn.rank' = -3 must be positive"),
    ("layout-of-the-world", ARGS + ["--global-batch-size", "12"],
     "'training.global_batch_size' = 12 must be a multiple of training.micro_batch_size x data-parallel size = 4 x 2"),
    ("layout-auto-without-memory", ARGS + ["--layout", "auto"],
     "--layout auto needs the memory per GPU, and this machine has no CUDA device to ask: pass --gpu-memory-gb N"),
]


def _deepspeed_launch(argv, run_dir):
    """The launch of one case (its port taken when it starts): its CompletedProcess."""
    import subprocess
    import sys

    from megatron_sffn.parallel.launch import free_port
    from .runs import base_env
    deepspeed = os.path.join(os.path.dirname(sys.executable), "deepspeed")
    return subprocess.run([deepspeed, "--num_accelerators", "2", "--master_port", str(free_port()),
                           "launchers/pretrain.py", *argv, "--run-dir", str(run_dir)], cwd=ROOT, env=base_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def deepspeed_launches(request, tmp_path_factory):
    """The selected cases' launches, started together (two at a time: tests/background.py), each with
    its own run folder: {case id: (run folder, future of its CompletedProcess)}."""
    from tests import background
    started = {}
    selected = background.selected_params(request, "name")
    for name, argv, _ in DEEPSPEED_CASES:
        if name in selected:
            run_dir = tmp_path_factory.mktemp(name) / "run"
            started[name] = run_dir, background.submit(_deepspeed_launch, argv, run_dir)
    return started


@pytest.mark.slow
@pytest.mark.parametrize("name, needle", [(c[0], c[2]) for c in DEEPSPEED_CASES], ids=[c[0] for c in DEEPSPEED_CASES])
def test_under_the_deepspeed_launcher_one_rank_prints_before_the_rendezvous(name, needle, deepspeed_launches):
    """`deepspeed --num_accelerators 2`, as the README runs the demo: both ranks stop (exit 2),
    the line appears once (it was printed by every rank), and no rank reached the rendezvous or
    DeepSpeed's JIT op build."""
    run_dir, launched = deepspeed_launches[name]
    proc = launched.result()
    output = proc.stdout + proc.stderr
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert proc.returncode == 2, output[-3000:]
    assert len(errors) == 1 and needle in errors[0], output[-3000:]
    assert "deepspeed_shm_comm" not in output and "Traceback" not in output
    assert not run_dir.exists()
