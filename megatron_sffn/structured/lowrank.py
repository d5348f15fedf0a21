"""LowRank: W = U V with V (rank x in) and U (out x rank); (in + out) * rank parameters.

Tensor parallel (see DESIGN.md): the collective sits on the rank-r bottleneck z = V x, not
on the d-wide activation.
  column (fc1): V replicated, U split by rows. z = V x computed on every rank enters the
                region; backward all-reduces dz, T x r instead of T x d.
  row (fc2):    V split by columns, U replicated. Each rank's partial z_i = V_i h_i is
                all-reduced (T x r), then y = U z is computed redundantly (r x d, cheap).
Replicated factors see identical inputs and gradients on every rank, so their gradients agree.
"""
from __future__ import annotations

import torch

from .base import LinearMap, sharded_parameter
from .ops import apply_product


class LowRankMap(LinearMap):
    kind = "lowrank"

    def __init__(self, in_features, out_features, mode, tp, rank: int):
        super().__init__(in_features, out_features, mode, tp)
        self.rank = rank
        column = mode == "column"
        self.weight_v = sharded_parameter((rank, in_features), None if column else 1, tp)
        self.weight_u = sharded_parameter((out_features, rank), 0 if column else None, tp)

    def region_inputs(self, x):
        return [apply_product(x, self.weight_v)]

    def output_operands(self, tensors):
        return tensors[0], self.weight_u

    def input_weight(self):
        return self.weight_v

    def output_weight(self):
        return self.weight_u

    def partials_after_input(self, z):
        return [z]

    def combine(self, reduced):
        return apply_product(reduced[0], self.weight_u)

    def init_full(self, gen, std, init, device):
        if init == "normal":
            v = torch.empty(self.rank, self.in_features, device=device).normal_(0.0, std, generator=gen)
            u = torch.empty(self.out_features, self.rank, device=device).normal_(0.0, std, generator=gen)
            return {"weight_v": v, "weight_u": u}
        # The paper's init: truncated SVD of a dense N(0, std) matrix, sqrt(S) on each side.
        dense = torch.empty(self.out_features, self.in_features, device=device).normal_(0.0, std, generator=gen)
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        root = s[: self.rank].sqrt()
        return {"weight_v": root[:, None] * vh[: self.rank], "weight_u": u[:, : self.rank] * root[None, :]}
