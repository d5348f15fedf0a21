"""--to hf on trained checkpoints: transformers' AutoModelForCausalLM gives our logits, and
AutoTokenizer the sentencepiece ids of the run's tokenizer."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from megatron_sffn.checkpoint.consolidated import model_from_consolidated
from megatron_sffn.config import config_from_dict
from megatron_sffn.data import assets
from megatron_sffn.model import GPTModel
from tools.convert_checkpoint import main

from .common import call

pytestmark = pytest.mark.slow

TEXT = "The history of the  island, 1850\u20131900: na\u00efve accounts."


def _logits_match(hf_dir, model):
    from transformers import AutoModelForCausalLM
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids = torch.randint(0, 8000, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(ids).logits - model(ids)).abs().max()
    assert diff < 1e-4, diff


def test_dense_llama_export_from_the_run_folder(dense_run, tmp_path, capsys):
    out = tmp_path / "hf"
    code, stdout, err = call(main, ["--load", dense_run, "--save", out, "--to", "hf"], capsys)
    assert code == 0, err
    assert json.load(open(out / "config.json"))["architectures"] == ["LlamaForCausalLM"]
    # reference read straight from DeepSpeed's file of the one-rank run, not through the converter
    step = os.path.join(dense_run, "checkpoints", "step00000002")
    states = torch.load(os.path.join(step, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    cfg = config_from_dict(json.load(open(os.path.join(step, "meta.json")))["config"])
    model = GPTModel(cfg.model)
    model.load_state_dict(states["module"])
    _logits_match(str(out), model.eval())


def test_lowrank_gpt_neox_export_keeps_factors_and_tokenizer(consolidated4, tmp_path, capsys):
    from transformers import AutoTokenizer
    import sentencepiece as spm
    out = tmp_path / "hf"
    code, stdout, err = call(main, ["--load", consolidated4, "--save", out, "--to", "hf", "--keep-factors"], capsys)
    assert code == 0, err
    assert json.load(open(out / "config.json"))["architectures"] == ["GPTNeoXForCausalLM"]
    model, _, _ = model_from_consolidated(consolidated4)
    _logits_match(str(out), model)
    factors = load_file(str(out / "structured_factors.safetensors"))
    assert torch.equal(factors["blocks.1.ffn.fc1.structure.weight_v"],
                       model.state_dict()["blocks.1.ffn.fc1.structure.weight_v"])
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    expected = spm.SentencePieceProcessor(model_file=assets.default_tokenizer_path()).encode(TEXT)
    assert tokenizer(TEXT, add_special_tokens=False)["input_ids"] == expected
    assert open(out / "tokenizer.model", "rb").read() == open(assets.default_tokenizer_path(), "rb").read()
