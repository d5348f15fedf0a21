"""Pre-norm transformer block: x + attn(norm(x)), then + ffn(norm(.)).

The FFN's two (or, with SwiGLU, three) linears are ParallelLinears of the configured
structure: fc1 (and gate) column-parallel, fc2 row-parallel, as in Megatron's MLP.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from ..parallel.mappings import TensorParallel
from ..structured.guide import GuideState
from ..structured import linear as structured_linear
from ..structured.kernels import gelu_ffn
from ..structured.linear import ParallelLinear
from .attention import Attention, KVCache
from .layers import Norm

# reduce_flop draws are keyed by layer_id = block * SLOTS + slot
SLOTS = 4
FC1, FC2, GATE = 0, 1, 2


def ffn_kind_for_layer(cfg: ModelConfig, layer: int) -> str:
    return "dense" if (layer == 0 and cfg.ffn.first_layer_dense) else cfg.ffn.kind


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: TensorParallel, guided: bool,
                 guide_state: Optional[GuideState]):
        super().__init__()
        kind = ffn_kind_for_layer(cfg, layer)
        guided = guided and kind != "dense"
        common = dict(kind=kind, rank=cfg.ffn.rank, blocks=cfg.ffn.blocks, bias=cfg.bias,
                      guided=guided, guide_state=guide_state)
        d, f = cfg.hidden_size, cfg.ffn_hidden_size
        self.swiglu = cfg.activation == "swiglu"
        self.fc1 = ParallelLinear(d, f, "column", tp, layer_id=layer * SLOTS + FC1, **common)
        self.gate = (ParallelLinear(d, f, "column", tp, layer_id=layer * SLOTS + GATE, **common)
                     if self.swiglu else None)
        self.fc2 = ParallelLinear(f, d, "row", tp, layer_id=layer * SLOTS + FC2, **common)

    def draws(self) -> tuple:
        """This step's reduce_flop draws of the linears (a bool each; all False without guides)."""
        if any(m.has_guide() for m in self.linears()):
            return structured_linear.draw_guides(self.linears())
        return (False,) * len(self.linears())

    def forward(self, x, use: Optional[tuple] = None):
        """use: the draws, made by the caller outside compiled code (TransformerBlock.forward)."""
        if use is None:
            use = self.draws()
        if self.swiglu:
            use_fc1, use_gate, use_fc2 = use
            h = F.silu(self.gate(x, use_gate)) * self.fc1(x, use_fc1)
            return self.fc2(h, use_fc2)
        return gelu_ffn(self.fc1, self.fc2, x, use)  # fused bias + GELU kernels on CUDA

    def linears(self):
        return [m for m in (self.fc1, self.gate, self.fc2) if m is not None]


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, tp: TensorParallel, guided: bool = False,
                 guide_state: Optional[GuideState] = None):
        super().__init__()
        self.layer = layer
        self.norm1 = Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.attn = Attention(cfg, tp)
        self.norm2 = Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.ffn = FeedForward(cfg, layer, tp, guided, guide_state)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        # the reduce_flop draws are made here, in Python, and handed to the block's body, which
        # is what model/compile.py compiles: a tuple of bools guards only on its values (every
        # block shares the graphs), and the body has no graph break at the draw (a break inside
        # a checkpointed compiled block made its recomputation save other tensors than its forward)
        use = self.ffn.draws()
        if any(use):
            self.ffn.fc1.guide_state.place_alpha(x.device)
        return self.body(x, cache, use)

    def body(self, x: torch.Tensor, cache: Optional[KVCache], use: tuple) -> torch.Tensor:
        # the layer index matters only to the KV cache; reading it otherwise would make every
        # block a separate torch.compile graph (integer module attributes are guarded)
        attended = self.attn(self.norm1(x), cache, self.layer) if cache is not None else self.attn(self.norm1(x))
        x = x + attended
        return x + self.ffn(self.norm2(x), use)
