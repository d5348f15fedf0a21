"""A tensor-parallel linear layer: a (structured) map, an optional bias, an optional guide.

Attention projections use it with kind "dense" (Megatron's column/row-parallel linear); FFN
layers with any structure, plus the self-guided dense branch while it is active.

The guided forward puts the guide's traffic in the same collective as the structure's:
column mode copies [structure's region inputs..., x] into the region at once (one
all-reduce in backward), row mode reduces [structure's partials..., guide partial] at once.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ..fp8.products import fp8_recipe_of
from ..parallel.mappings import TensorParallel
from ..parallel.regions import enter_tensor_region, leave_tensor_region
from .base import LinearMap, sharded_parameter
from .blockdense import BlockDenseMap
from .blockshuffle import BlockShuffleMap
from .dense import DenseMap
from .guide import GuideState
from .lowrank import LowRankMap


def make_map(kind: str, in_features: int, out_features: int, mode: str, tp: TensorParallel,
             rank: Optional[int] = None, blocks: Optional[int] = None) -> LinearMap:
    if kind == "dense":
        return DenseMap(in_features, out_features, mode, tp)
    if kind == "lowrank":
        return LowRankMap(in_features, out_features, mode, tp, rank=rank)
    if kind == "blockdense":
        return BlockDenseMap(in_features, out_features, mode, tp, rank=rank, blocks=blocks)
    if kind == "blockshuffle":
        return BlockShuffleMap(in_features, out_features, mode, tp, blocks=blocks)
    raise ValueError(f"unknown ffn kind {kind!r}")


def _as_list(x):
    return list(x) if isinstance(x, tuple) else [x]


class ParallelLinear(nn.Module):
    """y = [a * W x + (1 - a) *] S(x) + b, sharded as `mode` over the tensor-parallel group.

    `layer_id` identifies this linear in the reduce_flop draw; `init_key` names it in the
    seed derivation so its initial values do not depend on the parallel layout.
    """

    def __init__(self, in_features: int, out_features: int, mode: str, tp: TensorParallel, *,
                 kind: str = "dense", rank: Optional[int] = None, blocks: Optional[int] = None,
                 bias: bool = True, guided: bool = False, guide_state: Optional[GuideState] = None,
                 layer_id: int = 0):
        super().__init__()
        self.mode, self.tp, self.layer_id = mode, tp, layer_id
        self.structure = make_map(kind, in_features, out_features, mode, tp, rank=rank, blocks=blocks)
        self.guide = DenseMap(in_features, out_features, mode, tp) if guided and kind != "dense" else None
        self.guide_state = guide_state
        self.bias = sharded_parameter((out_features,), 0 if mode == "column" else None, tp) if bias else None

    @property
    def kind(self) -> str:
        return self.structure.kind

    def uses_guide_now(self) -> bool:
        return self.guide is not None and self.guide_state is not None and self.guide_state.use_guide(self.layer_id)

    def _use_guide(self, use_guide: Optional[bool]) -> bool:
        """The draw handed in by the caller (drawn outside compiled graphs), else drawn here."""
        return self.uses_guide_now() if use_guide is None else use_guide

    def forward(self, x: torch.Tensor, use_guide: Optional[bool] = None) -> torch.Tensor:
        guided = self._use_guide(use_guide)
        fused_bias = getattr(self.structure, "forward_with_bias", None)  # inference's pre-merged maps: none
        if self.bias is not None and not guided and fused_bias is not None:
            y = fused_bias(x, self.bias)
            if y is not None:
                return y
        return self.add_bias(self.forward_unbiased(x, guided))

    def forward_unbiased(self, x: torch.Tensor, use_guide: Optional[bool] = None) -> torch.Tensor:
        if self._use_guide(use_guide):
            return self._guided_forward(x, self.guide_state.alpha_tensor)
        return self.structure(x)

    def add_bias(self, y: torch.Tensor) -> torch.Tensor:
        # bias in y's dtype, as autocast's linear does: an fp32 bias would promote a bf16 y
        # (and everything after it) to fp32
        return y + self.bias.to(y.dtype) if self.bias is not None else y

    # -- split form, for kernels that fuse the bias + activation into adjacent products --
    def splittable(self, use_guide: Optional[bool] = None) -> bool:
        """No guide runs now, and the structure's products are bf16 (the fused Triton GEMMs take
        16-bit operands only); every map exposes its outer factor (column: last, row: first)."""
        return (not self._use_guide(use_guide)
                and not any(fp8_recipe_of(p) is not None for p in self.structure.parameters()))

    def last_product_operands(self, x: torch.Tensor):
        """Column mode: (input, factor) of the last product; forward = add_bias(apply_product(...))."""
        inside = enter_tensor_region(self.tp, *self.structure.region_inputs(x))
        return self.structure.output_operands(_as_list(inside))

    def first_product_weight(self) -> torch.Tensor:
        """Row mode: the factor applied first to this rank's input."""
        return self.structure.input_weight()

    def finish_from_first_product(self, p: torch.Tensor) -> torch.Tensor:
        """Row mode: the layer's output given p = apply_product(x, first_product_weight())."""
        s = self.structure
        reduced = leave_tensor_region(self.tp, *s.partials_after_input(p))
        return self.add_bias(s.combine(_as_list(reduced)))

    def _guided_forward(self, x, alpha):
        s, g = self.structure, self.guide
        if self.mode == "column":
            inputs = s.region_inputs(x)
            inside = _as_list(enter_tensor_region(self.tp, *inputs, x))
            ys, yg = s.region_outputs(inside[:-1]), g.region_outputs(inside[-1:])
        else:
            partials = s.partials(x)
            reduced = _as_list(leave_tensor_region(self.tp, *partials, *g.partials(x)))
            ys, yg = s.combine(reduced[: len(partials)]), g.combine(reduced[len(partials):])
        return alpha * yg + (1.0 - alpha) * ys

    def has_guide(self) -> bool:
        return self.guide is not None and self.guide_state is not None

    def drop_guide(self) -> None:
        """Remove the guide so its parameters (and, once the optimizer is rebuilt, its state) are freed."""
        self.guide = None

    @torch.no_grad()
    def init_full(self, gen: torch.Generator, std: float, init: str, device) -> Dict[str, torch.Tensor]:
        """Full initial values of every parameter under this module, keyed by relative name."""
        full = {f"structure.{k}": v for k, v in self.structure.init_full(gen, std, init, device).items()}
        if self.guide is not None:
            full["guide.weight"] = merged_full(self.structure, {k.split(".", 1)[1]: v for k, v in full.items()})
        if self.bias is not None:
            full["bias"] = torch.zeros(self.bias.full_shape, device=device)
        return full


@torch.no_grad()
def merged_full(structure: LinearMap, full: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The full dense (out x in) matrix of `structure`'s class with full parameter values `full`."""
    kwargs = {k: getattr(structure, k) for k in ("rank", "blocks") if hasattr(structure, k)}
    single = make_map(structure.kind, structure.in_features, structure.out_features, "column",
                      TensorParallel.single(), **kwargs)
    device = next(iter(full.values())).device
    single.to(device)
    single.load_full(full)
    return single.merged_weight()


def draw_guides(linears) -> tuple:
    """This step's reduce_flop draws of `linears` (a bool each), as Python values.

    A compiled block calls this outside its graphs (model/compile.py wraps it in
    torch.compiler.disable): traced, the draw would read every layer's id and make each
    block its own graph; called eagerly, its results are the only guard, four combinations
    per FFN shared by all blocks.
    """
    return tuple(m.uses_guide_now() for m in linears)


def keep_draws_out_of_compiled_graphs() -> None:
    global draw_guides
    if not getattr(draw_guides, "_outside_compiled_graphs", False):
        draw_guides = torch.compiler.disable(draw_guides)
        draw_guides._outside_compiled_graphs = True
