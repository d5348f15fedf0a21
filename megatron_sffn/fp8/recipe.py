"""What an FP8 product casts to and how it scales: the `training.fp8` section, resolved.

Tensorwise: one scale per tensor; e4m3 for activations and weights, e5m2 (wider range, the
usual choice) or e4m3 for gradients. Rowwise: one scale per row of each GEMM operand along
the contraction dimension, which keeps an outlier token or channel from flattening every other
row's resolution; Hopper's cuBLAS runs rowwise-scaled products in e4m3 only, so gradients
are e4m3 there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


@dataclass(frozen=True)
class Fp8Recipe:
    scaling: str = "tensorwise"
    grad_dtype: torch.dtype = E5M2

    @property
    def rowwise(self) -> bool:
        return self.scaling == "rowwise"

    def describe(self) -> str:
        grad = "e5m2" if self.grad_dtype == E5M2 else "e4m3"
        return f"{self.scaling} scaling, e4m3 forward, {grad} gradients"


def grad_format(scaling: str, requested: str) -> str:
    """The gradient format a config asks for ("auto": e5m2 tensorwise, e4m3 rowwise)."""
    if requested != "auto":
        return requested
    return "e4m3" if scaling == "rowwise" else "e5m2"


def recipe_from_config(fp8_cfg) -> Fp8Recipe:
    """The recipe of a validated `training.fp8` section."""
    fmt = grad_format(fp8_cfg.scaling, fp8_cfg.grad_format)
    return Fp8Recipe(scaling=fp8_cfg.scaling, grad_dtype=E5M2 if fmt == "e5m2" else E4M3)
