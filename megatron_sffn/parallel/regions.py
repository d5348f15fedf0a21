"""The two edges of a tensor-parallel region, with or without sequence parallelism.

  enter_tensor_region  (column-parallel input)  copy in / all-reduce back, or, with
                       sequence parallelism, all-gather the token shards / reduce-scatter back
  leave_tensor_region  (row-parallel output)    all-reduce the partials, or reduce-scatter
                       them to token shards / all-gather back
  column_product       enter_tensor_region(x) @ W^T as one autograd function whose backward
                       overlaps the input-gradient collective with the weight-gradient GEMM

Layers call these and never ask which mode is on. With tensor size 1 all are local.

Under torch.compile the collectives are traced into the block's graphs (parallel/collectives.py).
`keep_collectives_out_of_compiled_graphs` puts them back outside (a graph break at each):
`training.trace_collectives = false`, the fallback should a torch version fail to trace them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..fp8 import products as fp8
from .collectives import sum_over_group, tracing
from .mappings import TensorParallel, copy_to_tensor_region, reduce_from_tensor_region
from .sequence import (_apart, gather_from_sequence, gather_tokens, reduce_scatter_to_sequence,
                       start_token_gather, start_token_reduce_scatter)


def enter_tensor_region(tp: TensorParallel, *tensors: torch.Tensor):
    """Inputs of a column-parallel region, replicated over the tensor ranks inside it."""
    if not tp.enabled:
        return tensors if len(tensors) > 1 else tensors[0]
    if tp.sequence_sharded:
        return _gather_in(tp, *tensors)
    return _copy_in(tp, *tensors)


def leave_tensor_region(tp: TensorParallel, *tensors: torch.Tensor):
    """Partial sums of a row-parallel region, summed (on this rank's token shard under SP)."""
    if not tp.enabled:
        return tensors if len(tensors) > 1 else tensors[0]
    if tp.sequence_sharded:
        return _scatter_out(tp, *tensors)
    return _reduce_out(tp, *tensors)


_gather_in, _scatter_out = gather_from_sequence, reduce_scatter_to_sequence
_copy_in, _reduce_out = copy_to_tensor_region, reduce_from_tensor_region


def _autocast_dtype(x: torch.Tensor):
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


class _ColumnProduct(torch.autograd.Function):
    """y = enter(x) W^T. Backward, Megatron's order: (SP: start re-gathering x) -> dx = dy W
    -> start reducing dx (all-reduce, or reduce-scatter under SP) -> dW = dy^T x while it
    runs -> wait.

    Under SP a d-wide input keeps only its token shard for backward and is gathered again
    there, overlapped with dx (the memory sequence parallelism is for, at the price of one
    more all-gather); a structured bottleneck (T x r) is cheap to keep whole, so it is, and
    its backward gathers nothing.

    With an FP8 recipe the three GEMMs run through fp8/products.py, the collectives unchanged
    (they move bf16: the casts happen on each side of them).

    bias (bf16 products only): this rank's shard of the layer's bias, added by the GEMM's
    epilogue (cuBLAS's addmm) instead of a separate pass over the output; its gradient is dy
    summed over all the tokens this rank's output covers."""

    @staticmethod
    def forward(ctx, x, weight, group, size, sequence, cast_dtype, keep_gathered, recipe=None, bias=None):
        ctx.in_dtypes = (x.dtype, weight.dtype)
        ctx.group, ctx.size, ctx.recipe = group, size, recipe
        ctx.regather = sequence and not keep_gathered
        ctx.sequence = sequence
        ctx.bias_dtype = None if bias is None else bias.dtype
        if cast_dtype is not None:
            x, weight = x.to(cast_dtype), weight.to(cast_dtype)
        full = gather_tokens([x], group, size)[0] if sequence else x
        ctx.save_for_backward(x if ctx.regather else full, weight)
        with torch.autocast(x.device.type, enabled=False):
            if recipe is not None:
                y = fp8.forward_gemm(full.reshape(-1, full.shape[-1]), weight, recipe, full.dtype)
                return y.reshape(*full.shape[:-1], y.shape[-1])
            return F.linear(full, weight, None if bias is None else bias.to(full.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        saved, weight = ctx.saved_tensors
        group, size, sequence = ctx.group, ctx.size, ctx.sequence
        need_x, need_w = ctx.needs_input_grad[:2]
        regather = ctx.regather and need_w
        if regather:
            gathered, gather_work = start_token_gather([saved], group, size, async_op=True)
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.to(weight.dtype)
            grad_x = work = None
            if need_x:
                full_grad_x = _input_grad(g, weight, ctx.recipe)
                if sequence:
                    shard, work = start_token_reduce_scatter([full_grad_x], group, size, async_op=True)
                    grad_x = _apart(shard, [full_grad_x], 1.0 / size)[0]
                else:
                    grad_x, work = sum_over_group(full_grad_x, group, async_op=True)
            grad_w = None
            if need_w:
                if regather:
                    if gather_work is not None:  # None when traced: the graph waits
                        gather_work.wait()
                    full = gathered
                else:
                    full = saved.reshape(-1, saved.shape[-1])
                grad_w = _weight_grad(g.reshape(-1, g.shape[-1]), full, ctx.recipe).to(ctx.in_dtypes[1])
            if work is not None:
                work.wait()
        if grad_x is not None:
            grad_x = grad_x.to(ctx.in_dtypes[0])
        grad_bias = None
        if ctx.bias_dtype is not None and ctx.needs_input_grad[8]:
            grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, None, None, None, None, None, None, grad_bias


def _input_grad(g: torch.Tensor, weight: torch.Tensor, recipe) -> torch.Tensor:
    if recipe is None:
        return torch.matmul(g, weight)
    grad = fp8.input_grad_gemm(g.reshape(-1, g.shape[-1]), weight, recipe, g.dtype)
    return grad.reshape(*g.shape[:-1], weight.shape[1])


def _weight_grad(g2: torch.Tensor, full: torch.Tensor, recipe) -> torch.Tensor:
    if recipe is None:
        return g2.t().matmul(full)
    return fp8.weight_grad_gemm(g2, full, recipe, g2.dtype)


def _recipe_for(x: torch.Tensor, weight: torch.Tensor, tokens_factor: int):
    """The weight's FP8 recipe if this call's shape can run in FP8 (tokens after any gather)."""
    recipe = fp8.fp8_recipe_of(weight)
    if recipe is None:
        return None
    tokens = tokens_factor * fp8.tokens_of(x)
    return recipe if fp8.fits(tokens, weight.shape[1], weight.shape[0]) else None


def column_product(tp: TensorParallel, x: torch.Tensor, weight: torch.Tensor, keep_gathered: bool = False,
                   bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """enter_tensor_region(x) @ weight^T for a 2-D (out_local, in) weight, overlapped in backward.
    keep_gathered: under SP keep all tokens of x for backward instead of gathering them again.
    bias: this rank's bias shard, added in the GEMM's epilogue (tensor-parallel bf16 products
    only: bias_in_column_product says where)."""
    if not tp.enabled:
        return fp8.linear(x, weight) if bias is None else F.linear(x, weight, bias.to(x.dtype))
    return _parallel_column_product(tp, x, weight, keep_gathered, bias)


def bias_in_column_product(tp: TensorParallel, weight: torch.Tensor) -> bool:
    """Whether column_product can take a bias under tensor parallelism: bf16 products (an FP8
    weight keeps the separate add there)."""
    return tp.enabled and fp8.fp8_recipe_of(weight) is None


def _parallel_column_product(tp: TensorParallel, x: torch.Tensor, weight: torch.Tensor, keep_gathered: bool,
                             bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    if tp.sequence_sharded and not keep_gathered and tracing():
        return _regathered_product_in_graph(tp, x, weight, bias)
    recipe = _recipe_for(x, weight, tp.size if tp.sequence_sharded else 1)
    if bias is not None and recipe is not None:
        raise ValueError("column_product takes a bias for bf16 products only (bias_in_column_product)")
    return _ColumnProduct.apply(x, weight, tp.group, tp.size, tp.sequence_sharded, _autocast_dtype(x),
                                keep_gathered, recipe, bias)


def _regathered_product_in_graph(tp: TensorParallel, x: torch.Tensor, weight: torch.Tensor,
                                 bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """_ColumnProduct's memory under torch.compile with SP. Traced, its backward re-gather is
    a collective the partitioner never recomputes, so the graph would keep the whole gathered
    d-wide input for the weight gradient (what SP is meant to save: +8% of a dense TP2 SP
    block's saved bytes, measured). A selective checkpoint of just this product marks the
    all-gather to be recomputed in backward from the token shard instead, as eager does."""
    from torch.utils.checkpoint import checkpoint
    return checkpoint(_gathered_product, tp, x, weight, bias, use_reentrant=False, context_fn=_recompute_the_gather)


def _gathered_product(tp: TensorParallel, x: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    cast_dtype = _autocast_dtype(x)
    if cast_dtype is not None:  # gather in the product's dtype, as _ColumnProduct does
        x, weight = x.to(cast_dtype), weight.to(cast_dtype)
    full = gather_from_sequence(tp, x)
    with torch.autocast(x.device.type, enabled=False):
        if bias is not None:
            return F.linear(full, weight, bias.to(full.dtype))
        return fp8.linear(full, weight)


def _recompute_the_gather():
    from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts
    gather_ops = (torch.ops._c10d_functional.all_gather_into_tensor.default,
                  torch.ops._c10d_functional.wait_tensor.default)

    def policy(ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_RECOMPUTE if op in gather_ops else CheckpointPolicy.PREFER_SAVE
    return create_selective_checkpoint_contexts(policy)


_COLLECTIVE_ENTRY_POINTS = ("_gather_in", "_scatter_out", "_copy_in", "_reduce_out", "_parallel_column_product")


def keep_collectives_out_of_compiled_graphs() -> None:
    """Wrap every collective entry point above in torch.compiler.disable (idempotent, for the
    rest of the process): compiled blocks then break their graph at every collective."""
    module = globals()
    for name in _COLLECTIVE_ENTRY_POINTS:
        function = module[name]
        if not getattr(function, "_outside_compiled_graphs", False):
            wrapped = torch.compiler.disable(function)
            wrapped._outside_compiled_graphs = True
            module[name] = wrapped
