"""Keep the forward's FP8 casts for backward in compiled blocks (`training.fp8.keep_casts`).

Eager FP8 products save the e4m3 casts of their input and weight for backward (products.py).
Under torch.compile AOTAutograd ignores what an autograd function saves and lets the min-cut
partitioner choose: it keeps the bf16 tensors (the norm's input and statistics, the GELU's
pre-activation, the weights) and makes every e4m3 cast again in backward, recomputing the norm
or GELU in front of it, because a cast counts as free to recompute. On an H100 those kernels
took 7.2 ms of a 1.3B dense step (docs/performance.md, FP8). Marking each forward FP8 cast
MUST_SAVE in the joint graph makes the partitioner save it (in the layout backward's GEMM
wants) instead: one byte a value held from forward to backward, where the recompute read two
and wrote one. A joint-graph pass of Inductor's does the marking; it touches no bf16 graph.
Measured on an H100 it is no faster (1.3B dense 0.999x, 2.7B 1.010x) for 3-4 GB more peak, so
it is off unless asked for (docs/performance.md, FP8).
"""
from __future__ import annotations

from typing import Set

import torch
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.utils.checkpoint import CheckpointPolicy

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def backward_nodes(graph: torch.fx.Graph) -> Set[torch.fx.Node]:
    """Nodes of a joint graph that depend on an incoming gradient (AOTAutograd's `tangents_*`)."""
    found: Set[torch.fx.Node] = set()
    for node in graph.nodes:  # topological order
        if (node.op == "placeholder" and node.name.startswith("tangents")) or \
                any(arg in found for arg in node.all_input_nodes):
            found.add(node)
    return found


def is_fp8_cast(node: torch.fx.Node) -> bool:
    value = node.meta.get("val")
    return (node.op == "call_function" and isinstance(value, torch.Tensor) and value.dtype in FP8_DTYPES
            and node.target in (torch.ops.prims.convert_element_type.default, torch.ops.aten._to_copy.default))


class KeepForwardFp8Casts(CustomGraphPass):
    """Inductor joint-graph pass: every FP8 cast made in forward is MUST_SAVE (a gradient's cast,
    e4m3 with training.fp8.grad_format e4m3, belongs to backward and is left alone: it cannot be
    saved from a forward that never made it)."""

    def __call__(self, graph: torch.fx.Graph) -> None:
        in_backward = backward_nodes(graph)
        for node in graph.nodes:
            if is_fp8_cast(node) and node not in in_backward:
                node.meta["recompute"] = CheckpointPolicy.MUST_SAVE

    def uuid(self) -> str:  # part of Inductor's cache key: a graph compiled with the pass is another graph
        return "megatron_sffn.fp8.keep_forward_casts.v1"


def inductor_options(keep: bool) -> dict:
    """torch.compile options that keep the casts (empty when not asked)."""
    return {"joint_custom_post_pass": KeepForwardFp8Casts()} if keep else {}
