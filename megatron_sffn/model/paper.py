"""The paper's model sizes and 32% structured settings, and its published parameter counts."""
from __future__ import annotations

from typing import Dict, List

from ..config import FFNConfig, ModelConfig
from .accounting import model_stats

# name: (width, layers, heads, ffn width), Transformer-s/m/l/xl of PAPER.md
PAPER_SIZES = {
    "110m": (768, 12, 12, 3072),
    "335m": (1024, 24, 16, 4096),
    "730m": (1536, 24, 12, 6144),
    "1p3b": (2048, 24, 16, 8192),
}

# Beyond the paper: GPT-3's 2.7B / 6.7B / 13B shapes (Brown et al. 2020, Table 2.1; ffn = 4 d),
# trained with the paper's recipe (vocab 32000, seq 1024, structures at the 32% rule below).
GPT3_SIZES = {
    "2p7b": (2560, 32, 32, 10240),
    "6p7b": (4096, 32, 32, 16384),
    "13b": (5120, 40, 40, 20480),
}

# Table 1 of the paper (Transformer-xl), total parameters in millions
PAPER_XL_PARAMS_M = {"dense": 1274, "lowrank": 744, "blockdense": 728, "blockshuffle": 744}


def paper_model(size: str, kind: str = "dense") -> ModelConfig:
    """The paper's architecture: LayerNorm, GELU, biases, RoPE, tied embeddings, vocab 32000
    (a PAPER_SIZES or GPT3_SIZES name)."""
    d, layers, heads, ffn = {**PAPER_SIZES, **GPT3_SIZES}[size]
    return ModelConfig(vocab_size=32000, hidden_size=d, num_layers=layers, num_heads=heads,
                       ffn_hidden_size=ffn, seq_length=1024, ffn=ffn_32_percent(kind, d))


def ffn_32_percent(kind: str, width: int) -> FFNConfig:
    """The paper's ~32% FFN-parameter setting of each structure (R = d/4; B = 4, R = 3d/8)."""
    if kind == "dense":
        return FFNConfig(kind="dense")
    if kind == "lowrank":
        return FFNConfig(kind="lowrank", rank=width // 4)
    if kind == "blockdense":
        return FFNConfig(kind="blockdense", rank=3 * width // 8, blocks=4)
    if kind == "blockshuffle":
        return FFNConfig(kind="blockshuffle", blocks=4)
    raise ValueError(kind)


def describe_ffn(ffn: FFNConfig) -> str:
    parts = [ffn.kind] + [f"{k[0].upper()}={v}" for k, v in (("rank", ffn.rank), ("blocks", ffn.blocks)) if v]
    return " ".join(parts)


def paper_table() -> List[Dict]:
    rows = []
    for size in PAPER_SIZES:
        dense_ffn = model_stats(paper_model(size)).ffn_params
        for kind in ("dense", "lowrank", "blockdense", "blockshuffle"):
            cfg = paper_model(size, kind)
            stats = model_stats(cfg)
            row = {"size": size, "ffn": describe_ffn(cfg.ffn), **stats.as_dict(),
                   "ffn_percent": 100.0 * stats.ffn_params / dense_ffn}
            if size == "1p3b":
                row["paper_params_m"] = PAPER_XL_PARAMS_M[kind]
            rows.append(row)
    return rows
