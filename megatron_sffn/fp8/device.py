"""Where FP8 products can run: NVIDIA GPUs with FP8 tensor cores (compute capability 8.9 on:
Ada, Hopper, Blackwell). Anywhere else the mode is one clear error before any work starts.

MEGATRON_SFFN_FP8_ON_CPU=1 lets the products run on the CPU through torch's own _scaled_mm
(slow, exact same casts and scales): the CPU tests use it to check the FP8 path in every
parallel layout with real gloo process groups. It says nothing about speed.
"""
from __future__ import annotations

import os
from typing import Optional

CPU_ENV = "MEGATRON_SFFN_FP8_ON_CPU"
MIN_CAPABILITY = (8, 9)
KEY = "config key 'training.fp8.enabled' = true (--fp8)"


def fp8_problem() -> Optional[str]:
    """Why this process cannot run FP8 products (one line), or None."""
    if os.environ.get(CPU_ENV) == "1":
        return None
    import torch
    if not torch.cuda.is_available():
        return (f"{KEY} needs an NVIDIA GPU with FP8 tensor cores (compute capability 8.9 or newer: "
                "L4, L40, H100, H200, B200); no CUDA device is visible here")
    capability = torch.cuda.get_device_capability()
    if capability < MIN_CAPABILITY:
        return (f"{KEY} needs FP8 tensor cores (compute capability 8.9 or newer); "
                f"{torch.cuda.get_device_name()} is {capability[0]}.{capability[1]}: train in bf16 there")
    return None
