"""Which weights run their products in FP8: decided once per model, by the shapes each GEMM
will see, and written on the weight (`weight.fp8_recipe`) where the products read it.

FP8 pays where the GEMM time it halves outweighs the casts it adds: each cast reads an
operand in bf16 and writes it in FP8, a fixed cost per value that a thin product (a LowRank
bottleneck, a small block) does not earn back. `auto` keeps a weight in bf16 below the
crossovers below; `all` puts every weight whose shape allows it in FP8 (tests, and the
measurements the crossovers come from). The embedding and the LM head always stay bf16, as
in Transformer Engine's and torchao's recipes: the logits are where FP8's error would land
straight in the loss.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch.nn as nn

from .products import fits
from .recipe import Fp8Recipe, recipe_from_config

# Crossovers of the fused fwd+bwd of one compiled linear, FP8 against bf16
# (benchmarks/bench_fp8.py; docs/performance.md, "FP8"): below either, bf16 is as fast or faster.
MIN_TOKENS = 4096
MIN_WIDTH = 1024


@dataclass
class Fp8Choice:
    name: str                 # parameter name in the model
    shape: tuple              # this rank's shard
    fp8: bool
    reason: str               # why not, when not

    @property
    def role(self) -> str:
        """The weight's place in a block, without the block's index: 'ffn.fc1.weight_u'."""
        return re.sub(r"^(.*?\.)?\d+\.", "", self.name).replace("structure.", "")


def gemm_dims(weight) -> tuple:
    """(in, out) of one GEMM of this factor: a 2-D (out, in) weight, or one block of (B, q, p)."""
    if weight.dim() == 2:
        return weight.shape[1], weight.shape[0]
    return weight.shape[2], weight.shape[1]


def why_not(tokens: int, in_features: int, out_features: int, layers: str, block_diagonal: bool = False
            ) -> Optional[str]:
    """None when a product of this shape runs in FP8, else the reason it stays bf16."""
    if not fits(tokens, in_features, out_features):
        return "a dimension is not a multiple of 16"
    if layers == "all":
        return None
    if block_diagonal:
        return "block-diagonal (a cast per block costs more than its GEMM saves)"
    if tokens < MIN_TOKENS:
        return f"{tokens} tokens per micro-batch < {MIN_TOKENS}"
    narrow = min(in_features, out_features)
    if narrow < MIN_WIDTH:
        return f"{narrow} wide < {MIN_WIDTH}"
    return None


def gemm_weights(module: nn.Module) -> Dict[str, nn.Parameter]:
    """Every weight that a linear map multiplies by (the maps of structured/, in attention and
    FFNs, guides included); biases, norms and embeddings are not among them."""
    from ..structured.base import LinearMap
    found = {}
    for prefix, sub in module.named_modules():
        if isinstance(sub, LinearMap):
            for name, param in sub.named_parameters(recurse=False):
                found[f"{prefix}.{name}" if prefix else name] = param
    return found


def assign_fp8(module: nn.Module, recipe: Optional[Fp8Recipe], tokens: int, layers: str = "auto") -> List[Fp8Choice]:
    """Tag each GEMM weight of `module` with `recipe` where FP8 runs for it (None everywhere
    when recipe is None), and return the choices for the banner."""
    choices = []
    for name, param in gemm_weights(module).items():
        reason = "FP8 off" if recipe is None else why_not(tokens, *gemm_dims(param), layers, param.dim() == 3)
        param.fp8_recipe = recipe if reason is None else None
        choices.append(Fp8Choice(name, tuple(param.shape), reason is None, reason or ""))
    return choices


def assign_from_config(module: nn.Module, cfg) -> List[Fp8Choice]:
    """assign_fp8 for a run config: its recipe, its micro-batch's tokens (what every GEMM of a
    block sees, sequence parallelism's gathers included); nothing tagged when FP8 is off."""
    f = cfg.training.fp8
    if not f.enabled:
        return []
    tokens = cfg.training.micro_batch_size * cfg.model.seq_length
    return assign_fp8(module, recipe_from_config(f), tokens, f.layers)


def summary(choices: List[Fp8Choice]) -> str:
    """One line: which roles run FP8 and which stay bf16 (with the first reason), for the banner."""
    by_role: Dict[str, List[Fp8Choice]] = {}
    for c in choices:
        by_role.setdefault(c.role, []).append(c)
    fp8 = [r for r, cs in by_role.items() if all(c.fp8 for c in cs)]
    bf16 = [f"{r} ({cs[0].reason})" for r, cs in by_role.items() if not any(c.fp8 for c in cs)]
    mixed = [r for r, cs in by_role.items() if any(c.fp8 for c in cs) and not all(c.fp8 for c in cs)]
    count = sum(c.fp8 for c in choices)
    parts = [f"{count} of {len(choices)} GEMM weights in FP8"]
    if fp8:
        parts.append("FP8: " + ", ".join(fp8))
    if mixed:
        parts.append("some layers: " + ", ".join(mixed))
    if bf16:
        parts.append("bf16: " + ", ".join(bf16))
    return " | ".join(parts)
