"""Bytes that autograd keeps per token for backward, per piece (bf16 activations).

Megatron's per-layer count (Korthikanti et al. 2022: s b h (34 + 5 a s / h) bytes) adapted to
this model, tensor by tensor, from what the code saves:
  - attention is SDPA (flash / cuDNN): no s^2 softmax or its dropout mask; it keeps q and k
    after RoPE, the fused qkv output (v is a view of it), its output (which the output
    projection's input is a view of) and the fp32 log-sum-exp per head;
  - the norms keep their input and fp32 statistics (mean and 1/std; RMSNorm 1/std);
  - no dropout anywhere (the paper trains without), so no masks;
  - the FFN keeps the fc1 product (bias + GELU input) and fc2's input (f wide each; SwiGLU:
    gate input, silu output, up projection, product); a structured map also keeps its
    bottleneck (k = rank for LowRank/BlockDense, min(d, f) for BlockShuffle) once per linear.
Each tensor has a share rule under tensor size t:
  "tp"   split by heads / FFN columns: always 1/t
  "sp"   outside the tensor regions (norm inputs, region inputs kept as token shards by
         parallel/regions.py, bottlenecks reduce-scattered to token shards): 1/t only with
         sequence parallelism, whole on every rank without
  "rep"  whole on every rank either way: a structured fc1's bottleneck (under SP column_product
         keeps a T x r input gathered rather than gathering it again in backward; BlockShuffle's
         is shuffled across all blocks), and under SP a guided fc1's gathered input x
"""
from __future__ import annotations

from typing import Dict, List, Tuple

from ..config import ModelConfig

BF16, FP32 = 2, 4
# logits kept in bf16 for the loss's backward, plus their bf16 gradient while it is written
LOGIT_BYTES = 2 * BF16


def bottleneck_width(m: ModelConfig, ffn_kind: str) -> int:
    if ffn_kind in ("lowrank", "blockdense"):
        return m.ffn.rank
    if ffn_kind == "blockshuffle":
        return min(m.hidden_size, m.ffn_hidden_size)
    return 0


def norm_stats(m: ModelConfig) -> int:
    """fp32 mean and 1/std per token (LayerNorm), or 1/std alone (RMSNorm)."""
    return FP32 * (2 if m.norm == "layernorm" else 1)


def block_tensors(m: ModelConfig, ffn_kind: str, guided: bool) -> List[Tuple[str, int, str]]:
    """(what, bytes per token, share rule) of one transformer block."""
    d, f = m.hidden_size, m.ffn_hidden_size
    hd = m.attn_head_dim
    attn, kv = m.num_heads * hd, m.kv_heads * hd
    qkv = attn + 2 * kv
    rows = [
        ("norm1 input (residual stream)", BF16 * d, "sp"),
        ("norm1, norm2 statistics", 2 * norm_stats(m), "sp"),
        ("qkv input", BF16 * d, "sp"),
        ("qkv output (v is a view of it)", BF16 * qkv, "tp"),
        ("q, k after RoPE", BF16 * (attn + kv), "tp"),
        ("attention output = output projection input", BF16 * attn, "tp"),
        ("attention log-sum-exp", FP32 * m.num_heads, "tp"),
        ("norm2 input (residual stream)", BF16 * d, "sp"),
        ("fc1 input", BF16 * d, "sp"),
    ]
    if m.activation == "swiglu":
        rows += [("gate output, silu output, fc1 output", 3 * BF16 * f, "tp"), ("fc2 input", BF16 * f, "tp")]
        column_linears = 2
    else:
        rows += [("fc1 output (GELU input)", BF16 * f, "tp"), ("fc2 input", BF16 * f, "tp")]
        column_linears = 1
    k = bottleneck_width(m, ffn_kind)
    if k:
        rows += [("fc1 bottleneck", column_linears * BF16 * k, "rep"), ("fc2 bottleneck", BF16 * k, "sp")]
        if guided:  # under SP the guide's input x is gathered beside the bottleneck and kept whole
            rows += [("guide input (gathered under SP)", column_linears * BF16 * d, "rep-sp-only")]
    return rows


def head_tensors(m: ModelConfig) -> List[Tuple[str, int, str]]:
    """Final norm and head of the last stage (the logits are counted apart)."""
    d = m.hidden_size
    return [("final norm input", BF16 * d, "sp"), ("final norm statistics", norm_stats(m), "sp"),
            ("head input", BF16 * d, "sp")]


def backward_working_bytes_per_token(m: ModelConfig, tensor: int) -> float:
    """Gradients alive while one block's FFN runs backward on top of everything kept: the
    gradients of fc2's input and of the fc1 product, f wide each (SwiGLU: three)."""
    n = 3 if m.activation == "swiglu" else 2
    return n * BF16 * m.ffn_hidden_size / tensor


def share(rule: str, tensor: int, sequence_parallel: bool) -> float:
    """Fraction of a full tensor one rank keeps under `rule`."""
    sp = sequence_parallel and tensor > 1
    if rule == "tp":
        return 1.0 / tensor
    if rule == "sp":
        return 1.0 / tensor if sp else 1.0
    if rule == "rep":
        return 1.0
    if rule == "rep-sp-only":  # an extra tensor only under SP (without SP it is the fc1 input itself)
        return 1.0 if sp else 0.0
    raise ValueError(rule)


def bytes_per_token(rows, tensor: int, sequence_parallel: bool) -> float:
    return sum(b * share(rule, tensor, sequence_parallel) for _, b, rule in rows)


def block_bytes_per_token(m: ModelConfig, ffn_kind: str, tensor: int, sequence_parallel: bool,
                          guided: bool) -> float:
    return bytes_per_token(block_tensors(m, ffn_kind, guided), tensor, sequence_parallel)


def block_input_bytes_per_token(m: ModelConfig, tensor: int, sequence_parallel: bool) -> float:
    """What activation checkpointing keeps of a checkpointed chunk: its input."""
    return BF16 * m.hidden_size * share("sp", tensor, sequence_parallel)


def logit_bytes_per_token(m: ModelConfig, tensor: int) -> float:
    return LOGIT_BYTES * m.vocab_size / tensor


def breakdown(m: ModelConfig, ffn_kind: str, tensor: int, sequence_parallel: bool, guided: bool) -> Dict[str, float]:
    """Bytes per token of each kept tensor of one block on one rank (for docs and tests)."""
    return {name: b * share(rule, tensor, sequence_parallel) for name, b, rule in block_tensors(m, ffn_kind, guided)}
