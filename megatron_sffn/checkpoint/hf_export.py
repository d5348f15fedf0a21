"""Export to Hugging Face transformers, structured FFNs merged into dense matrices.

RMSNorm + SwiGLU + no biases -> LlamaForCausalLM (GQA included). LayerNorm + GELU (the
paper's architecture, biases allowed) with full multi-head attention -> GPTNeoXForCausalLM
with rotary on all head dims and sequential residuals. Our fused QKV is grouped by KV head
(q heads, k, v per group), which for multi-head attention is exactly GPT-NeoX's per-head
[q, k, v] layout, and splits into Llama's q/k/v projections by group.
With `keep_factors`, the structured factors are saved beside the weights
(structured_factors.safetensors) so megatron_sffn can restore the fast layers later.
"""
from __future__ import annotations

import json
import os
from typing import Dict

import torch

from ..config import ModelConfig
from ..model.gpt import GPTModel
from ..structured.linear import ParallelLinear


class ExportError(ValueError):
    pass


def hf_architecture(m: ModelConfig) -> str:
    if m.norm == "rmsnorm" and m.activation == "swiglu" and not m.bias:
        return "llama"
    if m.norm == "layernorm" and m.activation == "gelu" and m.kv_heads == m.num_heads:
        return "gpt_neox"
    raise ExportError(f"no transformers architecture matches norm={m.norm}, activation={m.activation}, "
                      f"bias={m.bias}, kv_heads={m.kv_heads}/{m.num_heads}: Llama needs rmsnorm+swiglu+no bias, "
                      "GPT-NeoX needs layernorm+gelu with full multi-head attention")


@torch.no_grad()
def merged_ffn_weights(model: GPTModel) -> Dict[str, torch.Tensor]:
    """name -> dense (out, in) weight for every FFN linear, structured ones multiplied out."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, ParallelLinear) and ".ffn." in f".{name}.":
            out[name] = module.structure.merged_weight().float()
    return out


def _split_qkv(qkv: torch.Tensor, m: ModelConfig):
    hd, kv, qpg = m.attn_head_dim, m.kv_heads, m.num_heads // m.kv_heads
    grouped = qkv.view(kv, qpg + 2, hd, *qkv.shape[1:])
    q = grouped[:, :qpg].reshape(kv * qpg * hd, *qkv.shape[1:])
    k = grouped[:, qpg].reshape(kv * hd, *qkv.shape[1:])
    v = grouped[:, qpg + 1].reshape(kv * hd, *qkv.shape[1:])
    return q, k, v


def _llama(model: GPTModel, merged: Dict[str, torch.Tensor]):
    from transformers import LlamaConfig
    m = model.cfg
    hf_cfg = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, intermediate_size=m.ffn_hidden_size,
                         num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                         num_key_value_heads=m.kv_heads, head_dim=m.attn_head_dim, hidden_act="silu",
                         max_position_embeddings=m.seq_length, rms_norm_eps=m.norm_eps,
                         tie_word_embeddings=m.tie_embeddings, attention_bias=False, mlp_bias=False,
                         rope_parameters={"rope_type": "default", "rope_theta": m.rope_base},
                         torch_dtype="float32", architectures=["LlamaForCausalLM"])
    sd = {"model.embed_tokens.weight": model.embedding.weight, "model.norm.weight": model.final_norm.weight}
    sd["lm_head.weight"] = model.embedding.weight if model.head is None else model.head.weight
    for i, block in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = _split_qkv(block.attn.qkv.structure.weight, m)
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
                   p + "self_attn.o_proj.weight": block.attn.proj.structure.weight,
                   p + "input_layernorm.weight": block.norm1.weight, p + "post_attention_layernorm.weight": block.norm2.weight,
                   p + "mlp.gate_proj.weight": merged[f"blocks.{i}.ffn.gate"],
                   p + "mlp.up_proj.weight": merged[f"blocks.{i}.ffn.fc1"],
                   p + "mlp.down_proj.weight": merged[f"blocks.{i}.ffn.fc2"]})
    return hf_cfg, sd


def _gpt_neox(model: GPTModel, merged: Dict[str, torch.Tensor]):
    from transformers import GPTNeoXConfig
    m = model.cfg
    hf_cfg = GPTNeoXConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                           num_attention_heads=m.num_heads, intermediate_size=m.ffn_hidden_size, hidden_act="gelu",
                           max_position_embeddings=m.seq_length, layer_norm_eps=m.norm_eps,
                           use_parallel_residual=False, attention_bias=True, tie_word_embeddings=False,
                           rope_parameters={"rope_type": "default", "rope_theta": m.rope_base,
                                            "partial_rotary_factor": 1.0},
                           torch_dtype="float32", architectures=["GPTNeoXForCausalLM"])
    d = m.hidden_size

    def bias_of(module, width):
        return module.bias if module.bias is not None else torch.zeros(width)

    def ln(norm, prefix):
        return {prefix + ".weight": norm.weight, prefix + ".bias": bias_of(norm, d)}

    head = model.embedding.weight if model.head is None else model.head.weight
    sd = {"gpt_neox.embed_in.weight": model.embedding.weight, "lm_head.weight": head.clone()}
    sd.update(ln(model.final_norm, "gpt_neox.final_layer_norm"))
    for i, block in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        qkv, proj, ffn = block.attn.qkv, block.attn.proj, block.ffn
        sd.update(ln(block.norm1, p + "input_layernorm"))
        sd.update(ln(block.norm2, p + "post_attention_layernorm"))
        sd.update({p + "attention.query_key_value.weight": qkv.structure.weight,
                   p + "attention.query_key_value.bias": bias_of(qkv, qkv.structure.weight.shape[0]),
                   p + "attention.dense.weight": proj.structure.weight, p + "attention.dense.bias": bias_of(proj, d),
                   p + "mlp.dense_h_to_4h.weight": merged[f"blocks.{i}.ffn.fc1"],
                   p + "mlp.dense_h_to_4h.bias": bias_of(ffn.fc1, m.ffn_hidden_size),
                   p + "mlp.dense_4h_to_h.weight": merged[f"blocks.{i}.ffn.fc2"],
                   p + "mlp.dense_4h_to_h.bias": bias_of(ffn.fc2, d)})
    return hf_cfg, sd


def export_hf(model: GPTModel, out_dir: str, tokenizer_model: str = None, keep_factors: bool = False) -> str:
    """Write a transformers model folder; returns the architecture name used."""
    if any(m.guide is not None for m in model.modules() if isinstance(m, ParallelLinear)):
        raise ExportError("the model still has self-guided guides: export a checkpoint taken after the guided "
                          "phase (a = 0), when the guides have been dropped")
    arch = hf_architecture(model.cfg)
    model = model.float()
    merged = merged_ffn_weights(model)
    hf_cfg, sd = (_llama if arch == "llama" else _gpt_neox)(model, merged)
    from transformers import AutoModelForCausalLM
    hf_model = AutoModelForCausalLM.from_config(hf_cfg)
    missing, unexpected = hf_model.load_state_dict({k: v.detach().float().contiguous() for k, v in sd.items()},
                                                   strict=False)
    missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq") and k != "lm_head.weight"]
    if missing or unexpected:
        raise ExportError(f"internal: export left {missing} unset and {unexpected} unused")
    if arch == "llama" and model.cfg.tie_embeddings:
        hf_model.tie_weights()
    hf_model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer_model:
        _save_tokenizer(tokenizer_model, out_dir)
    if keep_factors:
        from safetensors.torch import save_file
        factors = {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".ffn." in k}
        save_file(factors, os.path.join(out_dir, "structured_factors.safetensors"))
        with open(os.path.join(out_dir, "megatron_sffn_model.json"), "w") as f:
            from dataclasses import asdict
            json.dump(asdict(model.cfg), f, indent=2)
    return arch


TOKENIZER_CHECK = "The history of  Rome, 1234 \u2014 na\u00efve caf\u00e9!\nNew line   spaces."
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _save_tokenizer(model_path: str, out_dir: str) -> None:
    """The sentencepiece model as tokenizer.model (for sentencepiece users) and, when transformers
    reproduces its ids exactly, as a Llama-style tokenizer for AutoTokenizer (no BOS added:
    training documents start after the end-of-document token, never after a BOS)."""
    import shutil

    import sentencepiece as spm
    target = os.path.join(out_dir, "tokenizer.model")
    shutil.copy(model_path, target)
    expected = spm.SentencePieceProcessor(model_file=target).encode(TOKENIZER_CHECK)
    try:
        from transformers import LlamaTokenizer
        tok = LlamaTokenizer.from_pretrained(out_dir, legacy=False, add_bos_token=False)
        got = tok(TOKENIZER_CHECK, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise ValueError(f"transformers' conversion gives ids {got[:8]}..., sentencepiece {expected[:8]}...")
        tok.save_pretrained(out_dir)
    except Exception as e:  # the raw .model file is still there for any sentencepiece user
        for name in HF_TOKENIZER_FILES:
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        with open(os.path.join(out_dir, "TOKENIZER_NOTE.txt"), "w") as f:
            f.write(f"tokenizer.model is the sentencepiece model; transformers could not wrap it here: {e}\n")
