"""A batched, strided Triton GEMM whose epilogue carries the FFN's elementwise work.

C[g] = A[g] @ B[g] for g over a batch of equal-shaped products, every operand addressed by
strides, so the block-diagonal layouts of ops.py (activations viewed (B, T, p) inside a
(T, B*p) buffer) and transposed weights need no copies. Epilogues:

  NONE       C = acc
  BIAS_GELU  C = u = acc + bias (the pre-activation, kept for backward), AUX = gelu(u)
  GELU_BWD   C = acc * gelu'(AUX) with AUX = u from the forward; the column sums of C over
             this program's rows go to PARTIAL[row tile, column], summed afterwards into
             the bias gradient (no atomics, so the sum does not depend on scheduling)

Column c of batch g is global column g * N + c (bias and partial sums), matching the
block-major layout of block-diagonal outputs.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .gelu_math import gelu, gelu_grad

NONE, BIAS_GELU, GELU_BWD = 0, 1, 2


class TileConfig(NamedTuple):
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int


DEFAULT_TILE = TileConfig(128, 256, 64, 8, 8, 3)


@triton.jit
def _gemm_kernel(a_ptr, b_ptr, c_ptr, aux_ptr, bias_ptr, part_ptr,
                 M, N, K,
                 s_ag, s_am, s_ak, s_bg, s_bk, s_bn, s_cg, s_cm, s_cn,
                 EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    # grouped order: GROUP_M row tiles share each column tile while it is in L2
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # clamp out-of-range rows/columns onto valid ones for the loads (stores are masked);
    # with no partial column tile, say the columns are contiguous so an N-major B operand
    # still loads in 16-byte vectors (which software pipelining needs)
    rm_load = tl.where(rm < M, rm, 0)
    if EVEN_N:
        rn_load = tl.max_contiguous(tl.multiple_of(rn, BLOCK_N), BLOCK_N)
    else:
        rn_load = tl.where(rn < N, rn, 0)
    a_ptrs = a_ptr + g.to(tl.int64) * s_ag + rm_load.to(tl.int64)[:, None] * s_am + rk[None, :] * s_ak
    b_ptrs = b_ptr + g.to(tl.int64) * s_bg + rk[:, None] * s_bk + rn_load[None, :] * s_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_ok = rk < K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * s_ak
        b_ptrs += BLOCK_K * s_bk

    mask = (rm < M)[:, None] & (rn < N)[None, :]
    c_offs = g.to(tl.int64) * s_cg + rm.to(tl.int64)[:, None] * s_cm + rn[None, :] * s_cn
    out_ty = c_ptr.dtype.element_ty
    if EPILOGUE == 0:
        tl.store(c_ptr + c_offs, acc.to(out_ty), mask=mask)
    elif EPILOGUE == 1:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + g * N + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        u = acc.to(out_ty)
        tl.store(c_ptr + c_offs, u, mask=mask)
        tl.store(aux_ptr + c_offs, gelu(u.to(tl.float32)).to(out_ty), mask=mask)
    else:
        u = tl.load(aux_ptr + c_offs, mask=mask, other=0.0).to(tl.float32)
        grad = (acc * gelu_grad(u)).to(out_ty)
        tl.store(c_ptr + c_offs, grad, mask=mask)
        if HAS_BIAS:
            col_sum = tl.sum(tl.where(mask, grad.to(tl.float32), 0.0), axis=0)
            tl.store(part_ptr + pid_m * (N * tl.num_programs(1)) + g * N + rn, col_sum, mask=rn < N)


def batched_matmul(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, *, epilogue: int = NONE,
                   aux: Optional[torch.Tensor] = None, bias: Optional[torch.Tensor] = None,
                   tile: TileConfig = DEFAULT_TILE) -> Optional[torch.Tensor]:
    """out[g] = a[g] @ b[g] (+ epilogue). a (G, M, K), b (G, K, N), out/aux (G, M, N), any strides.

    `aux` must have out's strides. Returns, for GELU_BWD, the float32 bias gradient (G * N,)
    when `bias` is given as a flag tensor (its values unused), else None.
    """
    groups, m, k = a.shape
    n = b.shape[2]
    assert b.shape[:2] == (groups, k) and out.shape == (groups, m, n), (a.shape, b.shape, out.shape)
    if aux is not None:
        assert aux.shape == out.shape and aux.stride() == out.stride()
    tiles_m = triton.cdiv(m, tile.block_m)
    partial = None
    if epilogue == GELU_BWD and bias is not None:
        partial = torch.empty(tiles_m, groups * n, device=out.device, dtype=torch.float32)
    dummy = out
    grid = (tiles_m * triton.cdiv(n, tile.block_n), groups)
    if m and n:
        _gemm_kernel[grid](a, b, out, aux if aux is not None else dummy, bias if bias is not None else dummy,
                           partial if partial is not None else dummy, m, n, k,
                           *a.stride(), *b.stride(), *out.stride(),
                           EPILOGUE=epilogue, HAS_BIAS=bias is not None, EVEN_K=k % tile.block_k == 0,
                           EVEN_N=n % tile.block_n == 0,
                           BLOCK_M=tile.block_m, BLOCK_N=tile.block_n, BLOCK_K=tile.block_k,
                           GROUP_M=tile.group_m, num_warps=tile.num_warps, num_stages=tile.num_stages)
    if partial is not None:
        return partial.sum(0)
    return None


def pick_tile(groups: int, m: int, k: int, n: int) -> TileConfig:
    """Tile shape for one product: wide tiles for large outputs, narrower ones when the
    output is too small to give every multiprocessor work."""
    if m <= 64:
        return TileConfig(64, 128, 64, 8, 4, 4)
    if n <= 128:
        return TileConfig(128, 128, 64, 8, 4, 4)
    return DEFAULT_TILE
