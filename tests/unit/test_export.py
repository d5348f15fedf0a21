"""Consolidated checkpoints round-trip; the Hugging Face export gives our logits."""
import pytest
import torch

from megatron_sffn.checkpoint.consolidated import (ConsolidatedError, load_consolidated, model_from_consolidated,
                                                   save_consolidated)
from megatron_sffn.checkpoint.hf_export import ExportError, export_hf
from megatron_sffn.config import Config
from megatron_sffn.model import GPTModel

from .helpers import tiny_model

LLAMA_LIKE = dict(norm="rmsnorm", activation="swiglu", bias=False)


def _perturbed(cfg):
    model = GPTModel(cfg).initialize(seed=0)
    with torch.no_grad():  # non-trivial norms and biases so a wrong mapping would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("kind, options", [
    ("dense", {}), ("lowrank", {}), ("blockdense", {"tie_embeddings": False}),
    ("dense", dict(LLAMA_LIKE, num_kv_heads=2)), ("lowrank", dict(LLAMA_LIKE, num_kv_heads=1, head_dim=16)),
    ("blockshuffle", dict(LLAMA_LIKE, tie_embeddings=False)),
])
def test_hf_export_logits_match(tmp_path, kind, options):
    from transformers import AutoModelForCausalLM
    model = _perturbed(tiny_model(kind, **options))
    arch = export_hf(model, str(tmp_path))
    assert arch == ("llama" if options.get("norm") == "rmsnorm" else "gpt_neox")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-4


def test_hf_export_refuses_what_no_architecture_fits(tmp_path):
    with pytest.raises(ExportError, match="no transformers architecture"):
        export_hf(GPTModel(tiny_model("dense", num_kv_heads=2)), str(tmp_path))
    with pytest.raises(ExportError, match="guides"):
        export_hf(GPTModel(tiny_model("lowrank"), guided=True), str(tmp_path / "g"))


def test_consolidated_round_trip(tmp_path):
    cfg = Config(model=tiny_model("blockdense"))
    cfg.training.train_steps = 1
    model = _perturbed(cfg.model)
    out = str(tmp_path / "c")
    optim = {"exp_avg": {n: torch.randn_like(p) for n, p in model.named_parameters()}}
    save_consolidated(out, model.state_dict(), cfg.to_dict(), {"step": 7}, optim)
    weights, cfg2, meta, optim2 = load_consolidated(out, with_optimizer=True)
    assert meta["step"] == 7 and cfg2.model == cfg.model
    assert all(torch.equal(optim["exp_avg"][n], optim2["exp_avg"][n]) for n in optim["exp_avg"])
    loaded, _, _ = model_from_consolidated(out)
    ids = torch.randint(0, 128, (1, 8))
    torch.testing.assert_close(loaded(ids), model(ids))
    with pytest.raises(ConsolidatedError, match="already exists"):
        save_consolidated(out, model.state_dict(), cfg.to_dict(), {})


def test_consolidated_errors_name_the_problem(tmp_path):
    with pytest.raises(ConsolidatedError, match="missing model.safetensors"):
        load_consolidated(str(tmp_path))
    cfg = Config(model=tiny_model("lowrank"))
    cfg.training.train_steps = 1
    other = GPTModel(tiny_model("lowrank", num_layers=3)).initialize(seed=0)
    save_consolidated(str(tmp_path / "x"), other.state_dict(), cfg.to_dict(), {})
    with pytest.raises(ConsolidatedError, match="does not match the model"):
        model_from_consolidated(str(tmp_path / "x"))
