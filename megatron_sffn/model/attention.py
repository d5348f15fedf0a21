"""Causal self-attention split by heads over tensor ranks, with GQA, RoPE and SDPA.

The fused QKV weight is stored grouped by KV head: for each of the KV groups, its query
heads, then its key head, then its value head. Splitting the rows evenly across tensor
ranks then hands each rank whole groups, so no rank needs another's keys or values.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..parallel.mappings import TensorParallel
from ..structured.linear import ParallelLinear
from .layers import Rotary


class KVCache:
    """Keys/values of every layer for incremental decoding, with per-row positions.

    Rows of a batch may hold prompts of different lengths (left-padded): `valid` marks real
    tokens, each row's positions count only its valid tokens, and attention never looks at
    padding. k[i], v[i]: (B, kv_heads_local, max_len, head_dim) for layer i.

    Setting `column` (a (1,) long tensor on the cache's device) turns a call into the
    fixed-shape decode step CUDA graphs need: one valid token per row, written at that column
    by index ops, and attention over all max_len columns with `valid` as the mask. Nothing in it
    depends on a Python int that changes per step, and `length` is left to whoever advances
    `column` (inference/cuda_graph.py).
    """

    def __init__(self, num_layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, device, dtype):
        self.k = [torch.zeros(batch, kv_heads, max_len, head_dim, device=device, dtype=dtype)
                  for _ in range(num_layers)]
        self.v = [torch.zeros_like(t) for t in self.k]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.max_len = max_len
        self.length = 0                      # columns filled so far
        self.positions = None                # (B, S) positions of the tokens of the current call
        self.column: Optional[torch.Tensor] = None  # (1,) long: set during a fixed-shape step

    def begin(self, new_valid: torch.Tensor) -> None:
        """Register the (B, S) validity of the tokens about to be processed."""
        seq = new_valid.shape[1]
        if self.column is not None:
            if seq != 1:
                raise ValueError(f"a fixed-shape decode step takes one token per row, got {seq}")
            self.valid.index_fill_(1, self.column, True)
            self.positions = self.valid.sum(dim=1, keepdim=True) - 1  # valid tokens before this one
            return
        if self.length + seq > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {self.length + seq} requested")
        before = self.valid[:, : self.length].sum(dim=1, keepdim=True)
        self.positions = before + new_valid.long().cumsum(dim=1) - 1
        self.positions.clamp_(min=0)
        self.valid[:, self.length: self.length + seq] = new_valid

    def end(self, seq: int) -> None:
        if self.column is None:
            self.length += seq

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if self.column is not None:
            self.k[layer].index_copy_(2, self.column, k.to(self.k[layer].dtype))
            self.v[layer].index_copy_(2, self.column, v.to(self.v[layer].dtype))
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def mask(self, seq: int) -> torch.Tensor:
        """(B, 1, S, L) boolean: causal over cache columns and no padding."""
        if self.column is not None:  # columns after `column` are not valid yet: no causal part needed
            return self.valid[:, None, None, :]
        end = self.length + seq
        causal = torch.ones(seq, end, dtype=torch.bool, device=self.valid.device).tril(diagonal=self.length)
        return (causal[None] & self.valid[:, None, :end]).unsqueeze(1)


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
        self.rotary = Rotary(self.head_dim, cfg.rope_base, cfg.seq_length)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None, layer: int = 0) -> torch.Tensor:
        if cache is not None and self.tp.sequence_sharded:
            raise ValueError("incremental decoding runs without sequence parallelism")
        qkv = self.qkv(x)  # under sequence parallelism x is a token shard, qkv covers every token
        batch, seq = qkv.shape[:2]
        qkv = qkv.view(batch, seq, self.groups, self.q_per_group + 2, self.head_dim)
        q = qkv[:, :, :, : self.q_per_group].reshape(batch, seq, -1, self.head_dim).transpose(1, 2)
        k = qkv[:, :, :, self.q_per_group].transpose(1, 2)
        v = qkv[:, :, :, self.q_per_group + 1].transpose(1, 2)
        gqa = self.q_per_group > 1
        if cache is None:
            cos, sin = self.rotary.cos_sin(0, seq, x.device, q.dtype)
            q, k = Rotary.rotate(q, cos, sin), Rotary.rotate(k, cos, sin)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            cos, sin = self.rotary.at_positions(cache.positions, q.dtype)  # (B, 1, S, head_dim)
            q, k = Rotary.rotate(q, cos, sin), Rotary.rotate(k, cos, sin)
            mask = cache.mask(seq)
            k, v = cache.store(layer, k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        out = out.transpose(1, 2).reshape(batch, seq, -1)
        return self.proj(out)
