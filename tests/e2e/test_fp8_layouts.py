"""FP8 training through the launcher in every layout the CPU can run, with real gloo process
groups: data (ZeRO 1), tensor (with sequence parallelism), pipeline, compiled (with and without
training.fp8.keep_casts), activation checkpointing, resumed, converted.

The products run through torch's CPU _scaled_mm (MEGATRON_SFFN_FP8_ON_CPU=1: same casts and
scales as on a GPU). Self-guided lowrank (tiny_demo), every GEMM weight in FP8
(training.fp8.layers = all: the tiny shapes are below the crossovers), bf16.

What a layout may change: a tensor-parallel rank scales its own shard (a row-parallel
weight's amax is its slice's), so FP8 runs of different layouts differ by quantisation
noise, not bit for bit. They must stay as close to the data-parallel FP8 run as FP8 stays to
bf16, and FP8 must really have run (its losses differ from bf16's).
"""
import os

import pytest
import torch

from megatron_sffn.fp8.device import CPU_ENV

from .runs import TINY, latest, losses, run

pytestmark = pytest.mark.slow

STEPS = 4
COMMON = TINY + ["--train-steps", str(STEPS), "--eval-interval", str(STEPS), "--save-interval", "100",
                 "--precision", "bf16"]
FP8 = ["--fp8", "--override", 'training.fp8.layers="all"']
ON_CPU = {CPU_ENV: "1"}
# per-step loss of a layout against the data-parallel FP8 run, and of FP8 against bf16
LAYOUT_TOLERANCE = 2e-3
FP8_TOLERANCE = 1e-2


LAYOUTS = [
    ["--tensor-parallel", "2", "--sequence-parallel"],
    ["--pipeline-parallel", "2"],
    ["--tensor-parallel", "2", "--sequence-parallel", "--compile", "--override", "training.fp8.keep_casts=true"],
    ["--tensor-parallel", "2", "--fp8-scaling", "rowwise"],
    ["--override", "training.activation_checkpointing=true"],
    ["--pipeline-parallel", "2", "--compile", "--override", "training.cpp_wrapper=true", "--override",
     "training.activation_checkpointing=true"],   # the FP8 products called from Inductor's C++ wrapper
]
LAYOUT_IDS = ["tp2-sp", "pp2", "tp2-sp-compiled-keep-casts", "tp2-rowwise", "dp2-activation-checkpointing",
              "pp2-compiled-cpp-wrapper-checkpointed"]


def _run_fp8_baseline(fp8_dir):
    return run(2, COMMON + FP8 + ["--run-dir", fp8_dir, "--save-interval", str(STEPS)],
               os.path.join(fp8_dir, "logs"), extra_env=ON_CPU)


def _run_bf16_baseline(bf16_dir):
    run(2, COMMON + ["--run-dir", bf16_dir, "--no-save"], os.path.join(bf16_dir, "logs"))


def _run_layout(layout, folder):
    return run(2, COMMON + FP8 + layout + ["--run-dir", str(folder / "run"), "--no-save"], str(folder / "logs"),
               extra_env=ON_CPU)


def _run_stopped_and_resumed(folder):
    run_dir = str(folder / "run")
    run(2, COMMON + FP8 + ["--run-dir", run_dir, "--exit-interval", "2"], str(folder / "a"), extra_env=ON_CPU)
    return run(2, COMMON + FP8 + ["--run-dir", run_dir, "--no-save"], str(folder / "b"), extra_env=ON_CPU)


def _run_without_fp8_on_cpu(folder):
    return run(2, COMMON + FP8 + ["--run-dir", str(folder / "run")], str(folder / "logs"), expect=2)


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """The selected tests' runs, all independent of each other, started together (two at a time,
    tests/background.py; the refused run, which mostly waits, in the pool for such commands); each
    test checks its own: {key: (folder, future of rank 0's output)}."""
    from tests import background
    wanted = background.selected_names(request)
    layouts = {item.callspec.id for item in background.selected(request)
               if item.originalname == "test_fp8_layout_trains_like_data_parallel_fp8"}
    started = {}
    if wanted - {"test_fp8_without_fp8_tensor_cores_is_one_error_before_any_work"}:
        for name, fn in (("fp8", _run_fp8_baseline), ("bf16", _run_bf16_baseline)):
            folder = tmp_path_factory.mktemp(name)
            started[name] = folder, background.submit(fn, str(folder))
    for layout, layout_id in zip(LAYOUTS, LAYOUT_IDS):
        if layout_id in layouts:
            folder = tmp_path_factory.mktemp(layout_id)
            started[layout_id] = folder, background.submit(_run_layout, layout, folder)
    if "test_fp8_resumes_exactly" in wanted:
        folder = tmp_path_factory.mktemp("resumed")
        started["resumed"] = folder, background.submit(_run_stopped_and_resumed, folder)
    if "test_fp8_without_fp8_tensor_cores_is_one_error_before_any_work" in wanted:
        folder = tmp_path_factory.mktemp("no_fp8")
        started["no_fp8"] = folder, background.submit_waiting(_run_without_fp8_on_cpu, folder)
    return started


@pytest.fixture(scope="module")
def baselines(launched):
    """Data-parallel (2 ranks) runs: FP8, with a checkpoint at the end, and bf16."""
    (fp8_folder, fp8_run), (bf16_folder, bf16_run) = launched["fp8"], launched["bf16"]
    fp8_dir, bf16_dir = str(fp8_folder), str(bf16_folder)
    out = fp8_run.result()
    bf16_run.result()
    return fp8_dir, out, losses(fp8_dir), losses(bf16_dir)


def test_fp8_trains_close_to_bf16_and_says_what_runs_in_fp8(baselines):
    _, out, fp8, bf16 = baselines
    assert "fp8        tensorwise scaling, e4m3 forward, e5m2 gradients" in out
    assert "GEMM weights in FP8 | FP8: attn.qkv.weight" in out and "guides dropped" in out
    assert sorted(fp8) == sorted(bf16) == list(range(1, STEPS + 1))
    assert fp8 != bf16  # the products really ran in FP8
    for step in fp8:
        assert fp8[step] == pytest.approx(bf16[step], rel=FP8_TOLERANCE), step


@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
def test_fp8_layout_trains_like_data_parallel_fp8(layout, baselines, launched):
    _, _, fp8, bf16 = baselines
    folder, started = launched[LAYOUT_IDS[LAYOUTS.index(layout)]]
    run_dir = str(folder / "run")
    out = started.result()
    assert "GEMM weights in FP8" in out and "bf16: " not in out
    if "--compile" in layout:
        assert "torch.compile of the blocks" in out and "recompile_limit" not in out
    assert ("C++ wrapper: on" in out) == ("training.cpp_wrapper=true" in layout)
    assert ("forward casts kept for backward" in out) == ("training.fp8.keep_casts=true" in layout)
    got = losses(run_dir)
    assert sorted(got) == sorted(fp8)
    reference = bf16 if "rowwise" in layout else fp8  # another recipe: held to FP8's distance from bf16
    tolerance = FP8_TOLERANCE if "rowwise" in layout else LAYOUT_TOLERANCE
    for step, loss in reference.items():
        assert got[step] == pytest.approx(loss, rel=tolerance), step


def test_fp8_resumes_exactly(baselines, launched):
    """Dynamic scaling keeps no state: a run stopped and resumed matches the uninterrupted one."""
    _, _, fp8, _ = baselines
    folder, started = launched["resumed"]
    run_dir = str(folder / "run")
    out = started.result()
    assert "resume     from step00000002" in out
    assert losses(run_dir) == fp8


def test_fp8_checkpoint_converts_on_a_machine_without_fp8(baselines, tmp_path):
    """The checkpoint holds bf16/fp32 weights only; conversion needs no FP8 tensor cores."""
    fp8_dir, _, _, _ = baselines
    from tools.convert_checkpoint import main
    save = str(tmp_path / "consolidated")
    env_before = os.environ.pop(CPU_ENV, None)
    try:
        assert main(["--load", fp8_dir, "--save", save, "--to", "consolidated", "--weights-only"]) == 0
    finally:
        if env_before is not None:
            os.environ[CPU_ENV] = env_before
    assert latest(fp8_dir) == f"step{STEPS:08d}"
    from megatron_sffn.checkpoint.consolidated import load_consolidated
    tensors, cfg, _, _ = load_consolidated(save)
    assert cfg.training.fp8.enabled  # the run's config, kept for a resume on FP8 hardware
    assert any(k.endswith("weight_u") for k in tensors)
    assert all(v.dtype in (torch.float32, torch.bfloat16) for v in tensors.values())


def test_fp8_without_fp8_tensor_cores_is_one_error_before_any_work(launched):
    folder, started = launched["no_fp8"]
    run_dir = str(folder / "run")
    out = started.result()
    assert out.count("training.fp8.enabled") == 1 and "FP8 tensor cores" in out
    assert "Traceback" not in out and not os.path.exists(run_dir)
