"""Causal self-attention split by heads over tensor ranks, with GQA, RoPE and SDPA.

The fused QKV weight is stored grouped by KV head: for each of the KV groups, its query
heads, then its key head, then its value head. Splitting the rows evenly across tensor
ranks then hands each rank whole groups, so no rank needs another's keys or values.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..parallel.mappings import TensorParallel
from ..structured.linear import ParallelLinear
from .layers import Rotary


class KVCache:
    """Per-layer key/value buffers for incremental decoding: (B, kv_heads_local, max_len, head_dim)."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = torch.empty(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.head_dim = cfg.attn_head_dim
        self.groups = cfg.kv_heads // tp.size              # local KV groups
        self.q_per_group = cfg.num_heads // cfg.kv_heads
        qkv_width = cfg.kv_heads * (self.q_per_group + 2) * self.head_dim
        attn_width = cfg.num_heads * self.head_dim
        self.qkv = ParallelLinear(cfg.hidden_size, qkv_width, "column", tp, bias=cfg.bias)
        self.proj = ParallelLinear(attn_width, cfg.hidden_size, "row", tp, bias=cfg.bias)
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv = self.qkv(x).view(batch, seq, self.groups, self.q_per_group + 2, self.head_dim)
        q = qkv[:, :, :, : self.q_per_group].reshape(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.q_per_group].transpose(1, 2)
        v = qkv[:, :, :, self.q_per_group + 1].transpose(1, 2)
        start = cache.length if cache is not None else 0
        cos, sin = self.rotary.cos_sin(start, seq, x.device, q.dtype)
        q, k = Rotary.apply(q, cos, sin), Rotary.apply(k, cos, sin)
        if cache is not None:
            k, v = self._append(cache, k, v)
        gqa = self.q_per_group > 1
        if cache is None or start == 0:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            # decoding: the new queries attend to every cached position and causally among themselves
            mask = torch.ones(seq, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=start)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        return self.proj(out)

    @staticmethod
    def _append(cache: KVCache, k, v) -> Tuple[torch.Tensor, torch.Tensor]:
        end = cache.length + k.shape[2]
        cache.k[:, :, cache.length:end] = k
        cache.v[:, :, cache.length:end] = v
        cache.length = end
        return cache.k[:, :, :end], cache.v[:, :, :end]
