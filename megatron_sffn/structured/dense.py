"""Dense linear map, sharded like Megatron's column- and row-parallel linears.

Also the self-guided training guide: a dense W of the same shape as the structured map it
guides, initialised to that map's merged product.
"""
from __future__ import annotations

import torch

from .base import LinearMap, sharded_parameter


class DenseMap(LinearMap):
    kind = "dense"

    def __init__(self, in_features, out_features, mode, tp):
        super().__init__(in_features, out_features, mode, tp)
        self.weight = sharded_parameter((out_features, in_features), 0 if mode == "column" else 1, tp)

    def region_inputs(self, x):
        return [x]

    def output_operands(self, tensors):
        return tensors[0], self.weight

    def input_weight(self):
        return self.weight

    def output_weight(self):
        return self.weight

    def partials_after_input(self, z):
        return [z]

    def combine(self, reduced):
        return reduced[0]

    def init_full(self, gen, std, init, device):
        w = torch.empty(self.out_features, self.in_features, device=device)
        return {"weight": w.normal_(0.0, std, generator=gen)}
