"""Dynamic scaling: each operand is cast to FP8 with a scale computed from its own absolute
maximum in the same step (no amax history, so nothing to checkpoint and nothing that a
resumed run could get wrong).

quantize(t, dtype, dim) returns (q, inverse_scale) with t ~= q * inverse_scale: `dim` None
gives one scale for the tensor, an int one scale per slice along the other dimension (the
amax taken over `dim`, kept as a size-1 dimension: what torch._scaled_mm's rowwise mode
wants). Under torch.compile the amax, the scale and the cast fuse into one or two kernels.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

# below this amax a tensor is treated as zero: its scale stays finite and q is all zeros
AMAX_FLOOR = 1e-12


def quantize(t: torch.Tensor, dtype: torch.dtype, dim: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(q, inverse_scale), q = t * scale saturated to dtype's range, scale = max(dtype) / amax."""
    fmax = torch.finfo(dtype).max
    wide = t.float()
    amax = wide.abs().amax() if dim is None else wide.abs().amax(dim=dim, keepdim=True)
    scale = fmax / amax.clamp(min=AMAX_FLOOR)
    q = (wide * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def dequantize(q: torch.Tensor, inverse_scale: torch.Tensor) -> torch.Tensor:
    """q * inverse_scale in float32 (tests, and the CPU check of what a product saw)."""
    return q.float() * inverse_scale
