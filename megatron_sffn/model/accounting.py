"""Parameter and FLOP accounting from the config alone (no model is built).

Conventions (Megatron / PaLM style, so MFU figures compare with theirs): a multiply-add is
2 FLOPs; training costs 3x the forward (forward + two backward matmuls); attention scores
count the full S x S product (QK^T and AV: 4 * S * attention width per token and layer),
not the causal half; the LM head counts, the embedding lookup does not. Biases and norms
count as parameters but not as FLOPs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..config import Config, ModelConfig, SelfGuidedConfig


def structured_params(kind: str, n_in: int, n_out: int, rank: Optional[int], blocks: Optional[int]) -> int:
    """Weight entries (= MACs per token) of one bias-free map n_in -> n_out."""
    if kind == "dense":
        return n_in * n_out
    if kind == "lowrank":
        return (n_in + n_out) * rank
    if kind == "blockdense":
        return rank * (n_out + n_in // blocks)
    if kind == "blockshuffle":
        return min(n_in, n_out) * (n_in + n_out) // blocks
    raise ValueError(f"unknown ffn kind {kind!r}")


@dataclass
class ModelStats:
    total_params: int
    embedding_params: int
    non_embedding_params: int
    attention_params: int
    ffn_params: int              # every FFN weight and bias, first (dense) layer included
    ffn_matmul_params: int
    guide_params: int            # dense guides of the structured layers, when self-guided
    train_flops_per_token: float          # structured model, no guide
    guide_train_flops_per_token: float    # extra when every guide is computed

    def as_dict(self):
        return asdict(self)


def model_stats(m: ModelConfig) -> ModelStats:
    d, f, L, V = m.hidden_size, m.ffn_hidden_size, m.num_layers, m.vocab_size
    hd, H, KV = m.attn_head_dim, m.num_heads, m.kv_heads
    attn_width, qkv_width = H * hd, (H + 2 * KV) * hd
    bias = 1 if m.bias else 0
    norm_params = (2 if (m.norm == "layernorm" and m.bias) else 1) * d
    attn_matmul = d * qkv_width + attn_width * d
    attn_params = attn_matmul + bias * (qkv_width + d)
    n_fc1 = 2 if m.activation == "swiglu" else 1
    ffn_matmul = ffn_params = guide = 0
    for layer in range(L):
        kind = "dense" if (layer == 0 and m.ffn.first_layer_dense) else m.ffn.kind
        mats = (n_fc1 * structured_params(kind, d, f, m.ffn.rank, m.ffn.blocks)
                + structured_params(kind, f, d, m.ffn.rank, m.ffn.blocks))
        ffn_matmul += mats
        ffn_params += mats + bias * (n_fc1 * f + d)
        if kind != "dense":
            guide += (n_fc1 + 1) * d * f
    embedding = V * d
    head = 0 if m.tie_embeddings else V * d
    non_embedding = L * (attn_params + 2 * norm_params) + ffn_params + norm_params + head
    forward_matmul = L * attn_matmul + ffn_matmul + V * d
    attention_scores = L * 4 * m.seq_length * attn_width
    return ModelStats(
        total_params=embedding + non_embedding,
        embedding_params=embedding,
        non_embedding_params=non_embedding,
        attention_params=L * attn_params,
        ffn_params=ffn_params,
        ffn_matmul_params=ffn_matmul,
        guide_params=guide,
        train_flops_per_token=3.0 * (2.0 * forward_matmul + attention_scores),
        guide_train_flops_per_token=3.0 * 2.0 * guide,
    )


def dense_equivalent(m: ModelConfig) -> ModelConfig:
    """The same model with dense FFNs (the paper's baseline for a structured config)."""
    import dataclasses
    return dataclasses.replace(m, ffn=dataclasses.replace(m.ffn, kind="dense", rank=None, blocks=None))


def train_flops_per_token(stats: ModelStats, guide_fraction: float = 0.0) -> float:
    """Training FLOPs per token when the guide is computed with expected frequency/weight
    `guide_fraction` (0: no guide; a with reduce_flop; 1 while any guide is on without it)."""
    return stats.train_flops_per_token + guide_fraction * stats.guide_train_flops_per_token


@dataclass
class GuidePlan:
    """How many steps are guided, repeated and trained in total, and what it all costs."""
    base_steps: int
    guided_steps: int
    repeat_steps: int
    total_steps: int
    total_flops: float
    budget_flops: Optional[float]

    @property
    def total_training_steps(self) -> int:
        return self.total_steps


MEAN_ALPHA = 0.5  # the mean of a over the guided phase, for cosine and linear decay alike


def plan_self_guided(cfg: Config, base_steps: int) -> GuidePlan:
    """Guided-phase length, repeat phase and total FLOPs for `base_steps` optimizer steps.

    Same-FLOPs mode: the guided phase's tokens are repeated at the end, structured only, and
    its length G solves (N + G) * S + G * frac * Gd = budget per token-step, S the
    structured cost, Gd the guide cost and frac the mean fraction of guide work (a on average
    with reduce_flop, all of it otherwise).
    """
    sg: SelfGuidedConfig = cfg.self_guided
    stats = model_stats(cfg.model)
    tokens_per_step = cfg.training.global_batch_size * cfg.model.seq_length
    s, gd = stats.train_flops_per_token, stats.guide_train_flops_per_token
    frac = MEAN_ALPHA if sg.reduce_flop else 1.0
    if not sg.enabled:
        flops = base_steps * tokens_per_step * s
        return GuidePlan(base_steps, 0, 0, base_steps, flops, None)
    if not sg.same_flops:
        guided = max(1, round(sg.guided_fraction * base_steps))
        flops = tokens_per_step * (base_steps * s + guided * frac * gd)
        return GuidePlan(base_steps, guided, 0, base_steps, flops, None)
    if sg.flops_budget == "dense":
        budget = base_steps * tokens_per_step * model_stats(dense_equivalent(cfg.model)).train_flops_per_token
    else:
        budget = float(sg.flops_budget)
    guided = int((budget / tokens_per_step - base_steps * s) // (s + frac * gd))
    if guided < 1:
        raise ValueError(f"self_guided.flops_budget = {budget:.3e} FLOPs leaves no room for a guided phase: "
                         f"{base_steps} structured steps alone cost {base_steps * tokens_per_step * s:.3e}")
    guided = min(guided, base_steps)
    flops = tokens_per_step * ((base_steps + guided) * s + guided * frac * gd)
    return GuidePlan(base_steps, guided, guided, base_steps + guided, flops, budget)
