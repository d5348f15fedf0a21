"""BlockDense: W = U_r V_b, V_b block-diagonal (rank x in, B blocks), U_r dense (out x rank).

Parameters rank * (out + in / B). Tensor parallel:
  column (fc1): V_b replicated, U_r split by rows; z = V_b x (T x rank) enters the region.
  row (fc2):    V_b split by whole blocks (tensor size divides B): each rank turns its own
                input slice into its own slice of z with no partial sums; the slices are
                combined across ranks (T x rank) and y = U_r z runs on every rank.
"""
from __future__ import annotations

import torch

from .base import LinearMap, orthogonalize_, pad_to_full, sharded_parameter
from .ops import apply_product


class BlockDenseMap(LinearMap):
    kind = "blockdense"

    def __init__(self, in_features, out_features, mode, tp, rank: int, blocks: int):
        super().__init__(in_features, out_features, mode, tp)
        self.rank, self.blocks = rank, blocks
        column = mode == "column"
        self.blocks_v = sharded_parameter((blocks, rank // blocks, in_features // blocks),
                                          None if column else 0, tp)
        self.weight_u = sharded_parameter((out_features, rank), 0 if column else None, tp)

    def region_inputs(self, x):
        return [apply_product(x, self.blocks_v)]

    def output_operands(self, tensors):
        return tensors[0], self.weight_u

    def input_weight(self):
        return self.blocks_v

    def output_weight(self):
        return self.weight_u

    def partials_after_input(self, z):
        return [pad_to_full(z, self.tp)]

    def combine(self, reduced):
        return apply_product(reduced[0], self.weight_u)

    def init_full(self, gen, std, init, device):
        v = torch.empty(self.blocks, self.rank // self.blocks, self.in_features // self.blocks,
                        device=device).normal_(0.0, std, generator=gen)
        u = torch.empty(self.out_features, self.rank, device=device).normal_(0.0, std, generator=gen)
        if init == "paper":
            orthogonalize_(v)
            orthogonalize_(u)
        return {"blocks_v": v, "weight_u": u}
