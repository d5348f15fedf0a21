"""tools/convert_checkpoint.py: (tensor 2, pipe 2) -> consolidated -> (1, 1) and (1, 2), each
resumed through the launcher, continue exactly as the original layout continued."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from .common import STEPS, grad_norms, losses, relative, val_losses

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5  # fp32 on CPU, relative: other layouts reduce in another order


def test_consolidated_holds_the_full_training_state(run22, consolidated2):
    meta = json.load(open(os.path.join(consolidated2, "meta.json")))
    assert meta["step"] == 2 and meta["consumed_tokens"] == 2 * 8 * 32 and meta["optimizer_step"] == 2
    assert meta["loop"]["guides_dropped"] is False and meta["guide"]["active"] is True
    assert meta["source"]["layout"] == {"tensor": 2, "pipeline": 2, "data": 1, "zero_stage": 1, "optimizer": "deepspeed"}
    weights = load_file(os.path.join(consolidated2, "model.safetensors"))
    moments = load_file(os.path.join(consolidated2, "optimizer.safetensors"))
    assert any(".guide." in name for name in weights)  # the guided phase is not over at step 2
    for name, w in weights.items():   # full (unsharded) shapes, fp32, moments beside every parameter
        assert w.dtype == torch.float32
        assert moments[f"exp_avg/{name}"].shape == w.shape and moments[f"exp_avg_sq/{name}"].shape == w.shape
    assert weights["embedding.weight"].shape == (8192, 32)
    assert weights["blocks.1.ffn.fc1.structure.weight_u"].shape[0] == 64   # split over tensor ranks in run22
    assert float(moments["exp_avg_sq/blocks.1.ffn.fc2.structure.weight_v"].abs().sum()) > 0


@pytest.mark.parametrize("layout", ["1x1", "1x2"])
def test_reshaped_checkpoint_resumes_like_the_original_layout(run22, resumed, layout):
    run_dir = resumed[layout]
    original, continued = losses(run22), losses(run_dir)
    assert sorted(continued) == [3, 4]  # resumed at step 2, trained steps 3 and 4
    for step in (3, 4):   # step 4's loss depends on step 3's update: Adam moments and step count
        assert relative(continued[step], original[step]) < TOLERANCE, (step, continued[step], original[step])
        assert relative(grad_norms(run_dir)[step], grad_norms(run22)[step]) < TOLERANCE
    assert relative(val_losses(run_dir)[STEPS], val_losses(run22)[STEPS]) < TOLERANCE


def test_reshaped_run_folder_records_its_new_layout(resumed):
    run_dir = resumed["1x1"]
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert cfg["parallel"] == {**cfg["parallel"], "tensor": 1, "pipeline": 1, "zero_stage": 2}
    assert cfg["output"]["run_dir"] == run_dir
    meta = json.load(open(os.path.join(run_dir, "checkpoints", "step00000002", "meta.json")))
    assert meta["layout"] == {"tensor": 1, "pipeline": 1, "data": 2, "zero_stage": 2, "optimizer": "deepspeed"}
    assert meta["loop"] == {"step": 2, "consumed_tokens": 512, "guides_dropped": False}
    assert not os.path.exists(run_dir + ".partial")


def test_zero3_round_trip_is_bit_exact(dense_run, tmp_path):
    """One rank, ZeRO 1 -> consolidated -> data 2, ZeRO 3 (flat fp32 partitions, Adam state made
    by hand) -> consolidated again: every weight and moment bit-equal, same steps."""
    from tools.convert_checkpoint import main
    first, zero3, second = tmp_path / "c1", tmp_path / "zero3", tmp_path / "c2"
    assert main(["--load", dense_run, "--save", str(first), "--to", "consolidated"]) == 0
    assert main(["--load", str(first), "--save", str(zero3), "--to", "deepspeed", "--data-parallel", "2",
                 "--zero-stage", "3"]) == 0
    assert main(["--load", str(zero3), "--save", str(second), "--to", "consolidated"]) == 0
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(first / name)), load_file(str(second / name))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
    meta = json.load(open(second / "meta.json"))
    assert meta["source"]["layout"] == {"tensor": 1, "pipeline": 1, "data": 2, "zero_stage": 3, "optimizer": "deepspeed"}
    assert meta["optimizer_step"] == 2 and meta["loop"]["step"] == 2


def test_fused_optimizer_round_trip_is_bit_exact_and_zero_needs_the_other_implementation(tmp_path, capsys):
    """consolidated (bf16 run) -> DeepSpeed with optimizer.implementation = fused, sharded
    (ZeRO 1) over 2 data ranks -> consolidated again: fp32 masters and moments bit-equal.
    Asking for ZeRO 2 while the source config says fused names the flag to change."""
    from tools.convert_checkpoint import main

    from .common import call, synthetic_consolidated
    first, fused, second = tmp_path / "c1", tmp_path / "fused", tmp_path / "c2"
    synthetic_consolidated(str(first), precision="bf16", random_moments=True)
    assert main(["--load", str(first), "--save", str(fused), "--to", "deepspeed", "--data-parallel", "2",
                 "--zero-stage", "1", "--optimizer-implementation", "fused"]) == 0
    cfg = json.load(open(fused / "config.json"))
    assert cfg["optimizer"]["implementation"] == "fused" and cfg["parallel"]["zero_stage"] == 1
    from megatron_sffn.checkpoint.convert import source_world
    from megatron_sffn.checkpoint.locate import locate
    assert source_world(locate(str(fused))) == 1  # whole tensors: read back by one data rank, not two
    assert main(["--load", str(fused), "--save", str(second), "--to", "consolidated"]) == 0
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(str(first / name)), load_file(str(second / name))
        assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.load(open(second / "meta.json"))["source"]["layout"]["optimizer"] == "fused"
    code, _, err = call(main, ["--load", fused, "--save", tmp_path / "z2", "--to", "deepspeed", "--zero-stage", 2],
                        capsys)
    assert code == 2 and "optimizer.implementation" in err and "parallel.zero_stage" in err
    assert not (tmp_path / "z2").exists()
