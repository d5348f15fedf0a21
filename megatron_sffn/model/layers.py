"""Small building blocks: norms, rotary embedding, vocab-parallel embedding and LM head."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..parallel.mappings import TensorParallel
from ..parallel.regions import column_product, leave_tensor_region
from ..structured.base import sharded_parameter


class Norm(nn.Module):
    """LayerNorm or RMSNorm, replicated on every tensor rank (torch's fused kernels)."""

    def __init__(self, kind: str, width: int, eps: float, bias: bool):
        super().__init__()
        self.kind, self.eps = kind, eps
        self.weight = sharded_parameter((width,), None, TensorParallel.single())
        has_bias = bias and kind == "layernorm"
        self.bias = sharded_parameter((width,), None, TensorParallel.single()) if has_bias else None

    def forward(self, x):
        if self.kind == "layernorm":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)

    def init_full(self, gen, std, init, device) -> Dict[str, torch.Tensor]:
        full = {"weight": torch.ones(self.weight.shape, device=device)}
        if self.bias is not None:
            full["bias"] = torch.zeros(self.bias.shape, device=device)
        return full


class Rotary(nn.Module):
    """RoPE on all head dims, rotate-half layout (as GPT-NeoX and Llama), base configurable.

    cos and sin of the first `max_positions` positions are tables computed once, kept as
    non-persistent buffers (they follow the module's device, stay out of checkpoints). A
    training step only reads them: computed inside the compiled blocks instead, the angles'
    pow, cos and sin ran per element of q and k, 6.4 ms of a 109 ms 1.3B lowrank step on an
    H100 (benchmarks/bench_ledger.py), where the plain-PyTorch reference reads a table."""

    def __init__(self, head_dim: int, base: float, max_positions: int = 0):
        super().__init__()
        self.head_dim, self.base = head_dim, base
        self._cache = {}
        cos, sin = self._angles_cos_sin(0, max_positions, torch.device("cpu"), torch.float32)
        self.register_buffer("cos_table", cos, persistent=False)
        self.register_buffer("sin_table", sin, persistent=False)

    def cos_sin(self, start: int, length: int, device, dtype):
        if start + length <= self.cos_table.shape[0] and self.cos_table.device == torch.device(device):
            end = start + length
            return self.cos_table[start:end].to(dtype), self.sin_table[start:end].to(dtype)
        if torch.compiler.is_compiling():
            # in the graph, uncached: a cache filled while tracing would hold the graph's
            # outputs, which a CUDA-graph replay overwrites
            return self._angles_cos_sin(start, length, device, dtype)
        key = (start, length, device, dtype)
        if key not in self._cache:
            if len(self._cache) > 8:
                self._cache.clear()
            self._cache[key] = self._angles_cos_sin(start, length, device, dtype)
        return self._cache[key]

    def _angles_cos_sin(self, start: int, length: int, device, dtype):
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, device=device, dtype=torch.float32)
                                        / self.head_dim))
        pos = torch.arange(start, start + length, device=device, dtype=torch.float32)
        angles = torch.outer(pos, inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    def at_positions(self, positions: torch.Tensor, dtype):
        """cos/sin for explicit (B, S) positions, shaped (B, 1, S, head_dim)."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, device=positions.device,
                                                     dtype=torch.float32) / self.head_dim))
        angles = positions.float()[..., None] * inv_freq
        angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
        return angles.cos().to(dtype), angles.sin().to(dtype)

    @staticmethod
    def rotate(x, cos, sin):
        """x: (B, heads, S, head_dim); cos/sin: (S, head_dim)."""
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin


class VocabParallelEmbedding(nn.Module):
    """Token embedding with the vocabulary split across tensor ranks; doubles as tied LM head."""

    def __init__(self, vocab_size: int, width: int, tp: TensorParallel):
        super().__init__()
        self.tp, self.vocab_size = tp, vocab_size
        self.weight = sharded_parameter((vocab_size, width), 0, tp)
        self.vocab_start = tp.rank * (vocab_size // tp.size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.tp.enabled:
            return F.embedding(ids, self.weight)
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.weight.shape[0])
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        return leave_tensor_region(self.tp, out)  # under SP: this rank's token shard

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Local vocab slice of the logits: (..., V / tp) for every token (gathered under SP)."""
        return column_product(self.tp, hidden, self.weight)

    def init_full(self, gen, std, init, device):
        return {"weight": torch.empty(self.weight.full_shape, device=device).normal_(0.0, std, generator=gen)}


class LMHead(nn.Module):
    """Untied output projection, column-parallel over the vocabulary."""

    def __init__(self, vocab_size: int, width: int, tp: TensorParallel):
        super().__init__()
        self.tp = tp
        self.weight = sharded_parameter((vocab_size, width), 0, tp)

    def forward(self, hidden):
        return column_product(self.tp, hidden, self.weight)

    def init_full(self, gen, std, init, device):
        return {"weight": torch.empty(self.weight.full_shape, device=device).normal_(0.0, std, generator=gen)}
