"""Which implementation of the GELU FFN block runs, decided per call.

  reference   the modules' own PyTorch ops: CPU, self-guided steps, SwiGLU, no Triton
  elementwise cuBLAS products + one Triton kernel for bias + exact GELU (forward) and one
              for its derivative + bias gradient (backward): one pass over the f-wide
              activation each way instead of the three to four that separate ops take
  fused       bias + GELU in the epilogue of fc1's last product and the GELU derivative +
              bias-gradient partial sums in the epilogue of fc2's first input-gradient
              product (Triton GEMMs, kernels/bridge.py). Correct, but on the H100 its GEMMs
              ran 1.2-1.7x slower than cuBLAS, more than the elementwise passes it saves
              (docs/performance.md), so it runs only when asked for.

`auto` (the default) picks elementwise on CUDA from ELEMENTWISE_MIN_TOKENS tokens on,
reference on the CPU, for fewer tokens, and while torch.compile traces (Inductor then
fuses the plain ops itself; that is what the compiled rows of the benchmark measured). The environment
variable SFFN_FFN_PATH=reference|elementwise|fused|auto overrides the choice process-wide;
`force_path` does the same for a block of code (benchmarks, tests).
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

import torch

PATHS = ("reference", "elementwise", "fused")
# Below this many tokens `auto` keeps the reference path: there an eager call is launch-bound
# and a Triton launch from Python costs more than PyTorch's (H100: ~35-40 us more per FFN
# call at 1-256 tokens, identical under CUDA-graph replay; fwd+bwd at d=2048 even up to
# ~4K tokens, the elementwise path ahead from 8K). docs/performance.md, "crossover".
ELEMENTWISE_MIN_TOKENS = 4096

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


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def kernels_enabled(x: torch.Tensor) -> bool:
    """Whether a Triton kernel may run on `x` at all (single ops such as the block shuffle)."""
    return ((x.is_cuda or interpreting()) and triton_available() and requested_path() != "reference"
            and not _compiling())


def choose_path(x: torch.Tensor, fusable: bool) -> str:
    """The path for one FFN call on input `x`; `fusable` says the layers expose their products."""
    wanted = requested_path()
    if wanted == "reference" or not kernels_enabled(x):
        return "reference"
    if wanted == "fused" and fusable and compute_dtype(x) in (torch.bfloat16, torch.float16):
        return "fused"  # the Triton GEMMs are 16-bit only
    if wanted == "auto" and x.numel() // x.shape[-1] < ELEMENTWISE_MIN_TOKENS:
        return "reference"
    return "elementwise"
