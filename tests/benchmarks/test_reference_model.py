"""benchmarks/reference_model.py is the project's model written plainly: loaded with a GPTModel's
weights it gives the same logits and loss (every FFN kind, GPT and Llama shapes), and its
parameter count is model/accounting.py's, down to the 1.3B configs."""
import pytest
import torch

from megatron_sffn.config import load_config
from megatron_sffn.model import GPTModel
from megatron_sffn.model.accounting import model_stats
from megatron_sffn.model.block import ffn_kind_for_layer
from tests.benchmarks.common import KINDS, LLAMA, ROOT, SHAPE, TINY

from reference_model import ReferenceGPT  # noqa: E402  (benchmarks/ is on sys.path via common)

FFN_NAMES = {  # project parameter (under ffn.<linear>.) -> reference parameter (under mlp.<linear>.)
    "dense": {"structure.weight": "weight", "bias": "bias"},
    "lowrank": {"structure.weight_v": "0.weight", "structure.weight_u": "1.weight", "bias": "1.bias"},
    "blockdense": {"structure.blocks_v": "0.weight", "structure.weight_u": "1.weight", "bias": "1.bias"},
    "blockshuffle": {"structure.blocks_v": "v.weight", "structure.blocks_u": "u.weight", "bias": "u.bias"},
}


def _qkv_rows(t, m):
    """The project's QKV rows are grouped by KV head ([its q heads, k, v] per group); the reference's are [q, k, v]."""
    hd, kv, qpg = m.attn_head_dim, m.kv_heads, m.num_heads // m.kv_heads
    g = t.reshape(kv, qpg + 2, hd, *t.shape[1:])
    return torch.cat([g[:, :qpg].reshape(-1, *t.shape[1:]), g[:, qpg].reshape(-1, *t.shape[1:]),
                      g[:, qpg + 1].reshape(-1, *t.shape[1:])])


def reference_state(project: GPTModel, m) -> dict:
    out = {}
    for name, t in project.state_dict().items():
        if name == "embedding.weight":
            out["embed.weight"] = t
        elif not name.startswith("blocks."):
            out[name] = t
        else:
            _, layer, rest = name.split(".", 2)
            if rest.startswith("attn."):
                part, param = rest.split(".")[1], rest.split(".")[-1]
                out[f"blocks.{layer}.attn.{part}.{param}"] = _qkv_rows(t, m) if part == "qkv" else t
            elif rest.startswith("ffn."):
                _, linear, param = rest.split(".", 2)
                mapped = FFN_NAMES[ffn_kind_for_layer(m, int(layer))][param]
                out[f"blocks.{layer}.mlp.{linear}.{mapped}"] = t
            else:
                out[name] = t
    return out


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("shape", ["gpt", "llama"])
def test_same_logits_and_loss_as_the_project_model(kind, shape):
    cfg = load_config(TINY, SHAPE + KINDS[kind] + (LLAMA if shape == "llama" else []))
    project = GPTModel(cfg.model).initialize(seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random biases and norm weights too, so every parameter matters
        for p in project.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    ref = ReferenceGPT(cfg.model)
    ref.load_state_dict(reference_state(project, cfg.model), strict=True)
    ids = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.seq_length + 1), generator=gen)
    x, y = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        torch.testing.assert_close(ref(x), project(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ref(x, y), project.loss(x, y), rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in ref.parameters()) == model_stats(cfg.model).total_params


@pytest.mark.parametrize("name", ["dense", "lowrank", "blockdense", "blockshuffle", "lowrank_sgt"])
def test_parameter_count_of_the_1p3b_configs(name):
    cfg = load_config(f"{ROOT}/configs/1p3b_{name}.json")
    with torch.device("meta"):
        ref = ReferenceGPT(cfg.model)
    assert sum(p.numel() for p in ref.parameters()) == model_stats(cfg.model).total_params
