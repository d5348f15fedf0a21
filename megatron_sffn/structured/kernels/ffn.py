"""The GELU FFN block fc1 -> bias -> GELU -> fc2 (-> bias), routed through the fastest
path that can run this call (dispatch.py says which and why)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .dispatch import choose_path, compute_dtype


def bias_gelu(y: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """gelu(y + bias) (exact GELU), bias cast to y's dtype; one Triton pass each way on CUDA."""
    if choose_path(y, fusable=False) != "reference":
        from .elementwise import BiasGelu
        return BiasGelu.apply(y, bias)
    return F.gelu(y + bias.to(y.dtype) if bias is not None else y)


def gelu_ffn(fc1, fc2, x: torch.Tensor) -> torch.Tensor:
    """fc2(gelu(fc1(x))) for ParallelLinear fc1 (column) and fc2 (row)."""
    fusable = fc1.splittable() and fc2.splittable()
    path = choose_path(x, fusable)
    if path == "reference":
        return fc2(F.gelu(fc1(x)))
    if path == "elementwise":
        from .elementwise import BiasGelu
        return fc2(BiasGelu.apply(fc1.forward_unbiased(x), fc1.bias))
    from .bridge import gelu_bridge
    z, w1 = fc1.last_product_operands(x)
    p = gelu_bridge(z, w1, fc1.bias, fc2.first_product_weight(), compute_dtype(x))
    return fc2.finish_from_first_product(p)
