"""Fast CUDA paths for the GELU FFN block (Triton kernels + dispatch), with the PyTorch
path of the structured maps as the fallback everywhere else (CPU, guided steps, SwiGLU).

Triton is imported only when a CUDA path runs, so the package imports without it.
"""
from .dispatch import PATHS, choose_path, force_path, triton_available
from .ffn import bias_gelu, gelu_ffn

__all__ = ["PATHS", "choose_path", "force_path", "triton_available", "bias_gelu", "gelu_ffn"]
