"""Structured linear maps (one module per structure), the FFN linear that wraps them with a
bias and an optional self-guided dense branch, and the guide schedule."""
from .base import LinearMap
from .blockdense import BlockDenseMap
from .blockshuffle import BlockShuffleMap
from .dense import DenseMap
from .linear import ParallelLinear, make_map
from .guide import GuideState, guide_alpha, guide_draw
from .lowrank import LowRankMap

__all__ = ["LinearMap", "DenseMap", "LowRankMap", "BlockDenseMap", "BlockShuffleMap", "ParallelLinear",
           "make_map", "GuideState", "guide_alpha", "guide_draw"]
