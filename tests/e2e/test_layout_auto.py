"""`launchers/pretrain.py --layout auto`: the planner chooses the layout, on 2 gloo ranks with a
stated GPU memory, and the engine runs exactly that layout; layout flags given beside it win."""
import pytest

from megatron_sffn.config import apply_overrides, read_config_file
from megatron_sffn.training.auto_layout import choose_layout
from megatron_sffn.training.cli import parse

from .runs import TINY, read_meta, run

pytestmark = pytest.mark.slow

# TINY without its micro-batch flag (a flag given beside --layout auto is kept); bf16: the planner models it
AUTO = [a for i, a in enumerate(TINY) if "--micro-batch-size" not in TINY[max(0, i - 1):i + 1]]
AUTO += ["--precision", "bf16", "--train-steps", "2", "--eval-interval", "100", "--save-interval", "100",
         "--layout", "auto", "--gpu-memory-gb", "8"]


def planned(argv, kept):
    """What the planner answers for this command on 2 CPU ranks (the launcher asks the same)."""
    args, overrides = parse(argv)
    return choose_layout(apply_overrides(read_config_file(args.config), overrides), 2, kept, 8.0,
                         "--gpu-memory-gb", cuda=False, gpus_per_node=2)


def check_ran(out, run_dir, choice):
    layout = choice.chosen.layout
    assert f"auto       layout {layout.short()} (predicted peak" in out
    assert "for 2 GPUs x 8 GB (--gpu-memory-gb)" in out and "\nrunner-up  " in out
    assert (f"layout     world 2 = tensor {layout.tensor} x pipeline {layout.pipeline} x data {layout.data} | "
            f"ZeRO {layout.zero_stage}") in out
    assert f"micro {layout.micro_batch}," in out
    meta = read_meta(run_dir, "step00000002")
    assert meta["layout"]["tensor"] == layout.tensor and meta["layout"]["pipeline"] == layout.pipeline
    assert meta["layout"]["data"] == layout.data and meta["layout"]["zero_stage"] == layout.zero_stage
    training = meta["config"]["training"]
    assert training["micro_batch_size"] == layout.micro_batch
    assert training["activation_checkpointing"] == layout.activation_checkpointing
    assert meta["config"]["parallel"]["sequence_parallel"] == layout.sequence_parallel


def test_the_planners_layout_is_the_one_that_runs(tmp_path):
    choice = planned(AUTO, {})
    layout = choice.chosen.layout
    # not what the config alone gives (micro-batch 8 from tiny_demo, no checkpointing, tensor 1 x data 2)
    assert (layout.micro_batch, layout.activation_checkpointing) != (8, False) or layout.data != 2
    run_dir = str(tmp_path / "run")
    out = run(2, AUTO + ["--run-dir", run_dir], str(tmp_path / "logs"))
    check_ran(out, run_dir, choice)


def test_layout_flags_beside_auto_win(tmp_path):
    argv = AUTO + ["--pipeline-parallel", "2", "--zero-stage", "0"]
    choice = planned(argv, {"pipeline": 2, "zero_stage": 0})
    assert (choice.chosen.layout.pipeline, choice.chosen.layout.zero_stage) == (2, 0)
    run_dir = str(tmp_path / "run")
    out = run(2, argv + ["--run-dir", run_dir], str(tmp_path / "logs"))
    check_ran(out, run_dir, choice)
    assert "keeping --pipeline-parallel 2, --zero-stage 0" in out


def test_no_layout_that_fits_is_one_line(tmp_path, capsys, monkeypatch):
    from .test_bad_inputs import _launcher_main, one_error_line
    for key in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(key, raising=False)
    argv = [a if a != "8" else "1" for a in AUTO]   # 1 GB per GPU: the planner's overhead alone is 3
    assert _launcher_main()(argv + ["--run-dir", str(tmp_path / "run")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("error: --layout auto: no layout of this config fits 1 GPUs x 1 GB (the closest, ")
    assert not (tmp_path / "run").exists()
