"""Per-rank parameters and matmul work of each piece of the pipeline's layer list.

The pieces are the model's own modules (embedding, TransformerBlock, Norm, head) built on the
meta device with a TensorParallel of the layout's size, so which tensors are sharded and
which are whole on every tensor rank (LayerNorms, row biases, LowRank's V in fc1 and U in
fc2, ...) is read from the code, not restated here. Nothing is allocated.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Tuple

import torch

from ..config import ModelConfig
from ..model.block import TransformerBlock, ffn_kind_for_layer
from ..model.layers import LMHead, Norm, VocabParallelEmbedding
from ..parallel.mappings import TensorParallel
from ..structured.guide import GuideState


@dataclass(frozen=True)
class Piece:
    """One entry of the layer list, on one tensor rank. MACs are per token of a micro-batch."""
    name: str                   # "embedding", "blocks.3", "final_norm", "head"
    kind: str                   # embedding | block | norm | head
    ffn_kind: Optional[str]     # blocks only
    params: int                 # this rank's parameters, guides excluded (the partition weight)
    replicated_params: int      # of `params`, those whole on every tensor rank
    replicated_tensors: int     # how many tensors those are (one gradient all-reduce each under SP)
    guide_params: int           # this rank's dense guide parameters (self-guided phase)
    macs_sharded: int           # matmul weight entries of sharded weights (applied to all tokens)
    macs_replicated: int        # of replicated weights (all tokens; the rank's 1/t under SP)
    guide_macs: int
    attention_flops: float      # forward QK^T and AV FLOPs per token on this rank

    def train_flops_per_token(self, tensor: int, sequence_parallel: bool, guide_fraction: float) -> float:
        """Training FLOPs this rank does per token of the micro-batch (3x the forward)."""
        share = 1.0 / tensor if sequence_parallel else 1.0
        macs = self.macs_sharded + share * self.macs_replicated + guide_fraction * self.guide_macs
        return 3.0 * (2.0 * macs + self.attention_flops)


def _is_guide(name: str) -> bool:
    return ".guide." in f".{name}"


def _piece(name: str, kind: str, module: torch.nn.Module, ffn_kind=None, matmuls=True,
           attention_flops: float = 0.0) -> Piece:
    params = replicated = tensors = guide = sharded_macs = replicated_macs = guide_macs = 0
    for pname, p in module.named_parameters():
        whole = getattr(p, "tp_split_dim", None) is None
        is_matmul = matmuls and p.dim() >= 2  # block-diagonal (B, out/B, in/B) entries are MACs too
        if _is_guide(pname):
            guide += p.numel()
            guide_macs += p.numel() if is_matmul else 0
            continue
        params += p.numel()
        replicated += p.numel() if whole else 0
        tensors += 1 if whole else 0
        if is_matmul:
            if whole:
                replicated_macs += p.numel()
            else:
                sharded_macs += p.numel()
    return Piece(name, kind, ffn_kind, params, replicated, tensors, guide, sharded_macs, replicated_macs, guide_macs,
                 attention_flops)


_CACHE: Dict[Tuple[str, int, bool], Tuple[Piece, ...]] = {}


def _build_pieces(m: ModelConfig, tensor: int, guided: bool) -> Tuple[Piece, ...]:
    tp = TensorParallel(size=tensor, rank=0)
    state = GuideState(active=guided)
    attention = 4.0 * m.seq_length * m.num_heads * m.attn_head_dim / tensor
    with torch.device("meta"):
        embedding = _piece("embedding", "embedding", VocabParallelEmbedding(m.vocab_size, m.hidden_size, tp),
                           matmuls=False)
        built = {}
        blocks = []
        for layer in range(m.num_layers):
            kind = ffn_kind_for_layer(m, layer)
            if kind not in built:
                built[kind] = TransformerBlock(m, layer, tp, guided, state)
            blocks.append(_piece(f"blocks.{layer}", "block", built[kind], kind, attention_flops=attention))
        norm = _piece("final_norm", "norm", Norm(m.norm, m.hidden_size, m.norm_eps, m.bias), matmuls=False)
        if m.tie_embeddings:  # the last stage holds its own copy of the tied embedding
            head_module = VocabParallelEmbedding(m.vocab_size, m.hidden_size, tp)
        else:
            head_module = LMHead(m.vocab_size, m.hidden_size, tp)
        head = _piece("head", "head", head_module)
    return (embedding, *blocks, norm, head)


def model_pieces(m: ModelConfig, tensor: int, guided: bool) -> List[Piece]:
    """The layer list [embedding, blocks.0..L-1, final_norm, head] on tensor rank 0."""
    key = (json.dumps(asdict(m), sort_keys=True), tensor, guided)
    if key not in _CACHE:
        _CACHE[key] = _build_pieces(m, tensor, guided)
    return list(_CACHE[key])
