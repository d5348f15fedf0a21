"""BlockShuffle (Monarch-like): W = U_b P V_b, two block-diagonal factors around a shuffle.

With k = min(in, out): V_b has B blocks of (k/B x in/B), U_b has B blocks of (out/B x k/B);
parameters k * (in + out) / B. P (ops.block_shuffle) sends one value of every V block to
each U block. Outputs stay block-major (no inverse shuffle after U_b): a fixed output
permutation adds nothing to the family of maps, and block-major outputs let fc1's output
shards line up with fc2's input blocks under tensor parallelism.
  column (fc1): V_b replicated, U_b split by whole blocks; V_b x (T x k) enters the region.
  row (fc2):    V_b split by whole blocks; the shuffle needs every block, so the local
                slices are combined across ranks (T x k = T x d, like Megatron's dense fc2).
"""
from __future__ import annotations

import torch

from .base import LinearMap, orthogonalize_, pad_to_full, sharded_parameter
from .ops import apply_product, block_shuffle


class BlockShuffleMap(LinearMap):
    kind = "blockshuffle"

    def __init__(self, in_features, out_features, mode, tp, blocks: int):
        super().__init__(in_features, out_features, mode, tp)
        self.blocks = blocks
        self.inner = min(in_features, out_features)
        column = mode == "column"
        self.blocks_v = sharded_parameter((blocks, self.inner // blocks, in_features // blocks),
                                          None if column else 0, tp)
        self.blocks_u = sharded_parameter((blocks, out_features // blocks, self.inner // blocks),
                                          0 if column else None, tp)

    def _local_shuffled(self, z):
        """Shuffle the full (T, k) and keep the blocks whose U factors live on this rank."""
        shuffled = block_shuffle(z, self.blocks)
        if self.tp.size == 1:
            return shuffled
        return shuffled.chunk(self.tp.size, dim=-1)[self.tp.rank]

    def region_inputs(self, x):
        return [apply_product(x, self.blocks_v)]

    def output_operands(self, tensors):
        return self._local_shuffled(tensors[0]), self.blocks_u

    def input_weight(self):
        return self.blocks_v

    def partials_after_input(self, z):
        return [pad_to_full(z, self.tp)]

    def combine(self, reduced):
        return apply_product(block_shuffle(reduced[0], self.blocks), self.blocks_u)

    def init_full(self, gen, std, init, device):
        v = torch.empty(self.blocks, self.inner // self.blocks, self.in_features // self.blocks,
                        device=device).normal_(0.0, std, generator=gen)
        u = torch.empty(self.blocks, self.out_features // self.blocks, self.inner // self.blocks,
                        device=device).normal_(0.0, std, generator=gen)
        if init == "paper":
            orthogonalize_(v)
            orthogonalize_(u)
        return {"blocks_v": v, "blocks_u": u}
