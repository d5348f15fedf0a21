"""Exact (erf) GELU and its derivative as Triton device functions, shared by every kernel."""
import triton
import triton.language as tl

_SQRT_HALF = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def gelu(u):
    """0.5 u (1 + erf(u / sqrt 2)), u in float32."""
    return 0.5 * u * (1.0 + tl.math.erf(u * _SQRT_HALF))


@triton.jit
def gelu_grad(u):
    """d gelu / du = Phi(u) + u phi(u), u in float32."""
    cdf = 0.5 * (1.0 + tl.math.erf(u * _SQRT_HALF))
    return cdf + u * _INV_SQRT_2PI * tl.exp(-0.5 * u * u)
