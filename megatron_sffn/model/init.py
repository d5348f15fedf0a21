"""Layout-independent initialisation: full tensors from the seed, then this rank's slice.

Every module that knows its full initial values (`init_full`) gets its own generator,
seeded from (run seed, the module's layout-free name such as `blocks.3.ffn.fc1`). So the
values do not depend on tensor or pipeline size, on which stage builds the module, or on
the order modules are built: every layout starts from the same model.
"""
from __future__ import annotations

import hashlib

import torch
import torch.nn as nn

from ..parallel.mappings import TensorParallel
from ..structured.base import load_full_tensors


def derive_seed(seed: int, key: str) -> int:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@torch.no_grad()
def initialize_piece(piece: nn.Module, prefix: str, seed: int, std: float, ffn_init: str, device=None) -> None:
    """Initialise every parameter under `piece`, whose layout-free name is `prefix`."""
    device = torch.device(device) if device is not None else next(piece.parameters()).device
    done = []
    for name, module in piece.named_modules():
        if not hasattr(module, "init_full") or any(d == "" or name.startswith(d + ".") for d in done):
            continue
        done.append(name)
        key = f"{prefix}.{name}" if name else prefix
        gen = torch.Generator(device=device)
        gen.manual_seed(derive_seed(seed, key))
        full = module.init_full(gen, std, ffn_init, device)
        load_full_tensors(module, full, getattr(module, "tp", TensorParallel.single()))
