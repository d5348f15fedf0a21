"""Which implementation of the GELU FFN block runs, decided per call.

  reference   the modules' own PyTorch ops: CPU, self-guided steps, SwiGLU, no Triton
  elementwise cuBLAS products + one Triton kernel for bias + exact GELU (forward) and one
              for its derivative + bias gradient (backward): one pass over the f-wide
              activation each way instead of the three to four that separate ops take
  fused       as elementwise, but bias + GELU run in the epilogue of fc1's last product and
              the GELU derivative + bias-gradient partial sums in the epilogue of fc2's
              first product's input gradient (Triton GEMMs), so the f-wide activation and
              its gradient are written once and read where they are used

`auto` picks fused for 16-bit CUDA activations from FUSED_MIN_TOKENS tokens on (below it
small-M cuBLAS kernels win), elementwise for other CUDA calls, reference on the CPU.
The environment variable SFFN_FFN_PATH=reference|elementwise|fused|auto overrides the
choice process-wide; `force_path` does the same for a block of code (benchmarks).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

PATHS = ("reference", "elementwise", "fused")
FUSED_MIN_TOKENS = 2048
ELEMENTWISE_MIN_TOKENS = 1

_forced: Optional[str] = None


def triton_available() -> bool:
    """True when Triton imports (cached: the answer cannot change within a process)."""
    global _TRITON
    if _TRITON is None:
        try:
            import triton  # noqa: F401
            _TRITON = True
        except Exception:  # pragma: no cover - depends on the environment
            _TRITON = False
    return _TRITON


_TRITON: Optional[bool] = None


# Tests set this (with TRITON_INTERPRET=1 from before Triton's import): Triton's interpreter
# then runs the kernels on CPU tensors.
ALLOW_CPU_INTERPRETER = False


def interpreting() -> bool:
    return ALLOW_CPU_INTERPRETER and os.environ.get("TRITON_INTERPRET", "0") == "1"


def requested_path() -> str:
    """The path asked for: force_path's, else SFFN_FFN_PATH, else 'auto'."""
    if _forced is not None:
        return _forced
    value = os.environ.get("SFFN_FFN_PATH", "auto").strip().lower()
    if value not in PATHS + ("auto",):
        raise ValueError(f"SFFN_FFN_PATH must be one of {PATHS + ('auto',)}, got {value!r}")
    return value


@contextlib.contextmanager
def force_path(path: str) -> Iterator[None]:
    """Run the enclosed code with one FFN path (falling back where that path cannot run)."""
    global _forced
    if path not in PATHS + ("auto",):
        raise ValueError(f"path must be one of {PATHS + ('auto',)}, got {path!r}")
    previous, _forced = _forced, path
    try:
        yield
    finally:
        _forced = previous


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the products run in: autocast's when it is on, else the activation's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def choose_path(x: torch.Tensor, fusable: bool) -> str:
    """The path for one FFN call on input `x`; `fusable` says the layers expose their products."""
    wanted = requested_path()
    if wanted == "reference" or not (x.is_cuda or interpreting()) or not triton_available():
        return "reference"
    tokens = x.numel() // x.shape[-1]
    sixteen_bit = compute_dtype(x) in (torch.bfloat16, torch.float16)
    if wanted == "fused" or (wanted == "auto" and tokens >= FUSED_MIN_TOKENS):
        if fusable and sixteen_bit:
            return "fused"
    if wanted == "auto" and tokens < ELEMENTWISE_MIN_TOKENS:
        return "reference"
    return "elementwise"
