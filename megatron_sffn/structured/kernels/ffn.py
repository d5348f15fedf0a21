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


def gelu_ffn(fc1, fc2, x: torch.Tensor, use_guide=(None, None)) -> torch.Tensor:
    """fc2(gelu(fc1(x))) for ParallelLinear fc1 (column) and fc2 (row); use_guide: this step's
    reduce_flop draws of fc1 and fc2 when the caller has them (None: each layer draws)."""
    use1, use2 = use_guide
    fusable = fc1.splittable(use1) and fc2.splittable(use2)
    path = choose_path(x, fusable)
    if path == "reference":
        return fc2(F.gelu(fc1(x, use1)), use2)
    if path == "elementwise":
        from .elementwise import BiasGelu
        return fc2(BiasGelu.apply(fc1.forward_unbiased(x, use1), fc1.bias), use2)
    from .bridge import gelu_bridge
    z, w1 = fc1.last_product_operands(x)
    p = gelu_bridge(z, w1, fc1.bias, fc2.first_product_weight(), compute_dtype(x))
    return fc2.finish_from_first_product(p)
