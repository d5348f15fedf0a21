"""A plain-PyTorch GPT with the project's model shapes: the speed reference of issue 15.

Written the way a competent user writes one for a training script (nanoGPT style) and
sharing no code with megatron_sffn: nn.Linear, torch's norms, F.scaled_dot_product_attention,
fp32 parameters meant to run under bf16 autocast and whole-model torch.compile. It computes
the same model as megatron_sffn's GPTModel for a ModelConfig (RoPE, LayerNorm/RMSNorm,
GELU/SwiGLU, biases, tied embeddings, GQA, the first FFN dense when the config says so), and
its FFN maps do the same math as megatron_sffn/structured/*.py, so its parameter count and
FLOPs are model/accounting.py's for that config.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BlockDiagonal(nn.Module):
    """x (..., B*p) -> (..., B*q) through B independent blocks; weight (B, q, p), bias (B*q,)."""

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool = False):
        super().__init__()
        self.blocks = blocks
        self.weight = nn.Parameter(torch.empty(blocks, out_features // blocks, in_features // blocks))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x):
        lead = x.shape[:-1]
        xb = x.reshape(-1, self.blocks, x.shape[-1] // self.blocks).transpose(0, 1)  # (B, T, p)
        y = torch.bmm(xb, self.weight.transpose(1, 2)).transpose(0, 1).reshape(*lead, -1)
        return y + self.bias if self.bias is not None else y


def monarch_shuffle(z: torch.Tensor, blocks: int) -> torch.Tensor:
    """(..., k) seen as (k/B, B) and transposed: every output block takes one value of each input block."""
    return z.unflatten(-1, (z.shape[-1] // blocks, blocks)).transpose(-1, -2).flatten(-2)


class BlockShuffle(nn.Module):
    """Block-diagonal V (in -> k), the Monarch shuffle, block-diagonal U (k -> out); k = min(in, out)."""

    def __init__(self, in_features: int, out_features: int, blocks: int, bias: bool):
        super().__init__()
        inner = min(in_features, out_features)
        self.blocks = blocks
        self.v = BlockDiagonal(in_features, inner, blocks)
        self.u = BlockDiagonal(inner, out_features, blocks, bias=bias)

    def forward(self, x):
        return self.u(monarch_shuffle(self.v(x), self.blocks))


def ffn_map(kind: str, n_in: int, n_out: int, rank, blocks, bias: bool) -> nn.Module:
    """One FFN linear map with its bias on the output: W x + b for W dense or structured."""
    if kind == "dense":
        return nn.Linear(n_in, n_out, bias=bias)
    if kind == "lowrank":       # W = U V: V (rank x in), U (out x rank)
        return nn.Sequential(nn.Linear(n_in, rank, bias=False), nn.Linear(rank, n_out, bias=bias))
    if kind == "blockdense":    # W = U V_b: V_b block-diagonal (rank x in), U dense (out x rank)
        return nn.Sequential(BlockDiagonal(n_in, rank, blocks), nn.Linear(rank, n_out, bias=bias))
    if kind == "blockshuffle":
        return BlockShuffle(n_in, n_out, blocks, bias)
    raise ValueError(f"unknown ffn kind {kind!r}")


class MLP(nn.Module):
    def __init__(self, cfg, kind: str):
        super().__init__()
        d, f, r, b = cfg.hidden_size, cfg.ffn_hidden_size, cfg.ffn.rank, cfg.ffn.blocks
        self.swiglu = cfg.activation == "swiglu"
        self.fc1 = ffn_map(kind, d, f, r, b, cfg.bias)
        self.gate = ffn_map(kind, d, f, r, b, cfg.bias) if self.swiglu else None
        self.fc2 = ffn_map(kind, f, d, r, b, cfg.bias)

    def forward(self, x):
        h = F.silu(self.gate(x)) * self.fc1(x) if self.swiglu else F.gelu(self.fc1(x))
        return self.fc2(h)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, rotate-half layout (GPT-NeoX, Llama) on all head dims; x (B, heads, S, hd)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.heads, self.kv_heads, self.hd = cfg.num_heads, cfg.kv_heads, cfg.attn_head_dim
        self.qkv = nn.Linear(cfg.hidden_size, (self.heads + 2 * self.kv_heads) * self.hd, bias=cfg.bias)
        self.proj = nn.Linear(self.heads * self.hd, cfg.hidden_size, bias=cfg.bias)

    def forward(self, x, cos, sin):
        batch, seq, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.hd, self.kv_heads * self.hd, self.kv_heads * self.hd], -1)
        q = q.view(batch, seq, self.heads, self.hd).transpose(1, 2)
        k = k.view(batch, seq, self.kv_heads, self.hd).transpose(1, 2)
        v = v.view(batch, seq, self.kv_heads, self.hd).transpose(1, 2)
        cos, sin = cos[:seq].to(q.dtype), sin[:seq].to(q.dtype)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        return self.proj(y.transpose(1, 2).reshape(batch, seq, -1))


def norm(cfg) -> nn.Module:
    if cfg.norm == "layernorm":
        return nn.LayerNorm(cfg.hidden_size, eps=cfg.norm_eps, bias=cfg.bias)
    return nn.RMSNorm(cfg.hidden_size, eps=cfg.norm_eps)


class Block(nn.Module):
    def __init__(self, cfg, layer: int):
        super().__init__()
        kind = "dense" if (layer == 0 and cfg.ffn.first_layer_dense) else cfg.ffn.kind
        self.norm1, self.attn, self.norm2, self.mlp = norm(cfg), Attention(cfg), norm(cfg), MLP(cfg, kind)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.mlp(self.norm2(x))


class ReferenceGPT(nn.Module):
    """ids (B, S) -> logits (B, S, V), or the mean next-token loss when targets are given."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = norm(cfg)
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        hd = cfg.attn_head_dim
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        angles = torch.outer(torch.arange(cfg.seq_length, dtype=torch.float32), inv_freq).repeat(1, 2)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    @torch.no_grad()
    def initialize(self, generator: torch.Generator = None) -> "ReferenceGPT":
        """N(0, init_std) for every matrix and block stack, zero biases, unit norm weights."""
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, self.cfg.init_std, generator=generator)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)
        return self

    def forward(self, ids, targets=None):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, self.cos, self.sin)
        x = self.final_norm(x)
        logits = self.head(x) if self.head is not None else F.linear(x, self.embed.weight)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())
