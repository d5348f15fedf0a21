"""The GPT decoder of the paper: embedding, pre-norm blocks, final norm, (tied) LM head.

Written once for any tensor-parallel size (size 1 is the plain model). The pipeline
builder (model/pipeline.py) reuses the same pieces as DeepSpeed LayerSpecs.
"""
from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn as nn

from ..config import ModelConfig
from ..parallel.cross_entropy import vocab_parallel_cross_entropy
from ..parallel.mappings import TensorParallel
from ..structured.guide import GuideState
from ..structured.linear import ParallelLinear
from .attention import KVCache
from .block import TransformerBlock
from .init import initialize_piece
from .layers import LMHead, Norm, VocabParallelEmbedding


class GPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: Optional[TensorParallel] = None, guided: bool = False,
                 guide_state: Optional[GuideState] = None):
        super().__init__()
        tp = tp or TensorParallel.single()
        self.cfg, self.tp = cfg, tp
        self.guide_state = guide_state if guide_state is not None else GuideState(active=guided)
        self.embedding = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i, tp, guided, self.guide_state)
                                    for i in range(cfg.num_layers))
        self.final_norm = Norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.bias)
        self.head = None if cfg.tie_embeddings else LMHead(cfg.vocab_size, cfg.hidden_size, tp)

    @torch.no_grad()
    def initialize(self, seed: int, device=None) -> "GPTModel":
        std, ffn_init = self.cfg.init_std, self.cfg.ffn.init
        initialize_piece(self.embedding, "embedding", seed, std, ffn_init, device)
        for block in self.blocks:
            initialize_piece(block, f"blocks.{block.layer}", seed, std, ffn_init, device)
        initialize_piece(self.final_norm, "final_norm", seed, std, ffn_init, device)
        if self.head is not None:
            initialize_piece(self.head, "head", seed, std, ffn_init, device)
        return self

    def forward(self, ids: torch.Tensor, cache: Optional[KVCache] = None,
                valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Token ids (B, S) -> logits (B, S, V / tp) for this rank's vocab slice.

        With a KV cache the call continues the cached sequences; `valid` (B, S) marks real
        tokens when prompts are left-padded (default: all valid).
        """
        if cache is not None:
            cache.begin(valid if valid is not None else torch.ones_like(ids, dtype=torch.bool))
        x = self.embedding(ids)
        for block in self.blocks:
            x = block(x, cache)
        x = self.final_norm(x)
        if cache is not None:
            cache.end(ids.shape[1])
        return self.head(x) if self.head is not None else self.embedding.logits(x)

    def new_cache(self, batch: int, max_len: int, device=None, dtype=None) -> KVCache:
        param = next(self.parameters())
        return KVCache(self.cfg.num_layers, batch, self.cfg.kv_heads // self.tp.size, max_len,
                       self.cfg.attn_head_dim, device or param.device, dtype or param.dtype)

    def loss(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the batch."""
        return vocab_parallel_cross_entropy(self(ids), labels, self.tp).mean()

    def structured_linears(self) -> List[ParallelLinear]:
        return [m for m in self.modules() if isinstance(m, ParallelLinear) and m.kind != "dense"]

    def drop_guides(self) -> int:
        """Remove every guide; returns how many parameters were freed (on this rank)."""
        return drop_guides(self, self.guide_state)


def drop_guides(module: nn.Module, guide_state: Optional[GuideState]) -> int:
    freed = 0
    for m in module.modules():
        if isinstance(m, ParallelLinear) and m.guide is not None:
            freed += sum(p.numel() for p in m.guide.parameters())
            m.drop_guide()
    if guide_state is not None:
        guide_state.active = False
        guide_state.alpha = 0.0
    return freed
