"""The protocol every FFN linear map follows, whether dense or structured, sharded or not.

A map is `column` (input replicated, output split over tensor ranks) or `row` (input split,
output replicated after one reduction). Instead of hiding its collective, a map exposes
the tensors that cross the region boundary, so a caller can fuse several maps' traffic
into one collective (the self-guided layer reduces structured and guide partials at once):

  column: region_inputs(x) -> tensors that enter the region (identity fwd, all-reduce bwd)
          region_outputs(tensors) -> this rank's output slice
  row:    partials(x_local) -> tensors to all-reduce
          combine(reduced) -> the full output

Every parameter carries `tp_split_dim`: None when replicated on every tensor rank, else the
dimension along which the tensor ranks' shards concatenate (in rank order) to the full
tensor. Initialisation builds full tensors from the seed and slices them, so every layout
starts from the same model; checkpoint tools gather and re-slice with the same attribute.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fp8 import products as fp8_products
from ..fp8.products import fp8_recipe_of
from ..parallel.mappings import TensorParallel
from ..parallel.regions import bias_in_column_product, column_product, enter_tensor_region, leave_tensor_region
from .ops import apply_product

MODES = ("column", "row")


def sharded_parameter(full_shape: Tuple[int, ...], split_dim: Optional[int], tp: TensorParallel) -> nn.Parameter:
    """An uninitialised parameter holding this rank's shard of a tensor of `full_shape`."""
    shape = list(full_shape)
    if split_dim is not None and tp.size > 1:
        if shape[split_dim] % tp.size:
            raise ValueError(f"dimension {split_dim} of shape {tuple(full_shape)} is not divisible by "
                             f"tensor-parallel size {tp.size}")
        shape[split_dim] //= tp.size
    param = nn.Parameter(torch.empty(shape))
    param.tp_split_dim = split_dim
    param.full_shape = tuple(full_shape)
    return param


def shard_of(full: torch.Tensor, param: nn.Parameter, tp: TensorParallel) -> torch.Tensor:
    """This rank's slice of `full` for `param` (the whole tensor when replicated)."""
    dim = getattr(param, "tp_split_dim", None)
    if dim is None or tp.size == 1:
        return full
    return full.chunk(tp.size, dim=dim)[tp.rank]


@torch.no_grad()
def load_full_tensors(module: nn.Module, full: Dict[str, torch.Tensor], tp: TensorParallel) -> None:
    """Copy this rank's shard of each full tensor in `full` (keyed by parameter name) into `module`."""
    for name, param in module.named_parameters():
        if name not in full:
            raise KeyError(f"no value for parameter '{name}'")
        value = full[name]
        expected = getattr(param, "full_shape", tuple(param.shape))
        if tuple(value.shape) != tuple(expected):
            raise ValueError(f"parameter '{name}': expected full shape {tuple(expected)}, got {tuple(value.shape)}")
        param.copy_(shard_of(value, param, tp).to(device=param.device, dtype=param.dtype))


class LinearMap(nn.Module):
    """Base class: a bias-free linear map in_features -> out_features (full sizes)."""

    kind = "abstract"

    def __init__(self, in_features: int, out_features: int, mode: str, tp: TensorParallel):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.in_features, self.out_features, self.mode, self.tp = in_features, out_features, mode, tp

    # -- the math, each subclass ------------------------------------------------------
    # Every map is a first factor, the region boundary, then what follows it; a subclass names
    # the pieces and the two halves below follow. The pieces are also what kernels/ffn.py
    # needs to fuse bias + GELU into the products beside them (structured/linear.py).
    def region_inputs(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Column mode: the tensors that enter the region (x, or the bottleneck the first factor makes)."""
        raise NotImplementedError

    def output_operands(self, tensors: List[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Column mode: (input, factor) of the last product, whose result is this rank's output slice."""
        raise NotImplementedError

    def input_weight(self) -> torch.Tensor:
        """Row mode: the factor applied first to this rank's input slice."""
        raise NotImplementedError

    def partials_after_input(self, z: torch.Tensor) -> List[torch.Tensor]:
        """Row mode: the tensors to all-reduce, given z = this rank's input times input_weight()."""
        raise NotImplementedError

    def combine(self, reduced: List[torch.Tensor]) -> torch.Tensor:
        """Row mode: the full output from the reduced tensors."""
        raise NotImplementedError

    def region_outputs(self, tensors: List[torch.Tensor]) -> torch.Tensor:
        return apply_product(*self.output_operands(tensors))

    def partials(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.partials_after_input(apply_product(x, self.input_weight()))

    def init_full(self, gen: torch.Generator, std: float, init: str, device) -> Dict[str, torch.Tensor]:
        """Full-size initial values of every parameter, drawn from `gen` (layout independent)."""
        raise NotImplementedError

    # -- shared machinery ---------------------------------------------------------------
    def output_weight(self) -> Optional[torch.Tensor]:
        """Column mode (and row mode on one rank): the 2-D factor applied last, straight to the
        one region input, if that is all region_outputs does (then the product runs fused with the region's edge,
        its backward collective overlapped with the weight gradient: parallel/regions.py)."""
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "column":
            inputs = self.region_inputs(x)
            weight = self.output_weight()
            if weight is not None and len(inputs) == 1:
                return self._last_column_product(inputs[0], weight)
            inside = enter_tensor_region(self.tp, *inputs)
            return self.region_outputs(list(inside) if isinstance(inside, tuple) else [inside])
        reduced = leave_tensor_region(self.tp, *self.partials(x))
        return self.combine(list(reduced) if isinstance(reduced, tuple) else [reduced])

    def forward_with_bias(self, x: torch.Tensor, bias: torch.Tensor) -> Optional[torch.Tensor]:
        """forward(x) + bias with the bias added by the last GEMM's epilogue (cuBLAS's addmm, or
        _scaled_mm's for a tensorwise FP8 product; under tensor parallelism, column mode's bias
        shard in the region's product), or None where that cannot be (row mode under tensor
        parallelism, whose bias comes after the reduction; block-diagonal last factor; rowwise
        FP8; FP8 under tensor parallelism). A separate add would write the f-wide
        pre-activation once more and read it back: 2.1 ms of a 1.3B lowrank step on an H100
        (docs/performance.md, the ledger)."""
        weight = self.output_weight()  # on one rank, column or row: the last factor, a 2-D one
        if weight is None:
            return None
        if self.tp.enabled:  # column mode's shard of the bias, in the region's own product
            return self._column_product_with_bias(x, weight, bias)
        fp8 = fp8_recipe_of(weight) is not None
        # the last GEMM's input has x's tokens
        if fp8 and not fp8_products.bias_epilogue_applies(weight, fp8_products.tokens_of(x), fp8_products.output_dtype(x)):
            return None
        inputs = self.region_inputs(x)
        if len(inputs) != 1:
            return None
        if fp8:
            return fp8_products.linear_with_bias(inputs[0], weight, bias)
        return F.linear(inputs[0], weight, bias.to(inputs[0].dtype))

    def _column_product_with_bias(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
                                  ) -> Optional[torch.Tensor]:
        """Under tensor parallelism: column mode's forward with its bias shard in the product's
        epilogue (bf16 products), or None (row mode adds the bias after the reduction)."""
        if self.mode != "column" or not bias_in_column_product(self.tp, weight):
            return None
        inputs = self.region_inputs(x)
        if len(inputs) != 1:
            return None
        return self._last_column_product(inputs[0], weight, bias)

    def _last_column_product(self, z: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
                             ) -> torch.Tensor:
        """Column mode's one region input times the last factor, fused with the region's edge
        (column_product); a bottleneck narrower than the input (structured z, T x r) is kept
        whole for backward."""
        return column_product(self.tp, z, weight, keep_gathered=z.shape[-1] < self.in_features, bias=bias)

    def load_full(self, full: Dict[str, torch.Tensor]) -> None:
        load_full_tensors(self, full, self.tp)

    @torch.no_grad()
    def merged_weight(self) -> torch.Tensor:
        """The dense matrix this rank's shard applies: (out_local, in) for column, (out, in_local) for row.

        Structured maps are linear with no nonlinearity inside, so pushing the identity
        through the local math (no collective) recovers their exact dense equivalent.
        """
        param = next(self.parameters())
        if self.mode == "column":
            eye = torch.eye(self.in_features, device=param.device, dtype=param.dtype)
            return self.region_outputs(self.region_inputs(eye)).t().contiguous()
        in_local = self.in_features // self.tp.size
        eye = torch.eye(in_local, device=param.device, dtype=param.dtype)
        return self.combine(self.partials(eye)).t().contiguous()

    def extra_repr(self) -> str:
        shards = ", ".join(f"{n}={tuple(p.shape)}" for n, p in self.named_parameters(recurse=False))
        return f"{self.in_features}->{self.out_features}, mode={self.mode}, tp={self.tp.size}, {shards}"


def pad_to_full(local: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """Place this rank's slice of the last dim into zeros of the full width.

    Summing the padded slices across ranks is an all-gather written as an all-reduce, so
    it can share one collective with true partial sums (the guide's, in self-guided training).
    """
    if tp.size == 1:
        return local
    width = local.shape[-1]
    pieces = [torch.zeros_like(local) if r != tp.rank else local for r in range(tp.size)]
    return torch.cat(pieces, dim=-1) if width else local


def orthogonalize_(blocks: torch.Tensor) -> torch.Tensor:
    """Replace each matrix in the last two dims by U Vh of its SVD (the paper's block init)."""
    u, _, vh = torch.linalg.svd(blocks, full_matrices=False)
    blocks.copy_(u @ vh)
    return blocks
