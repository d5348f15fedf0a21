"""torch.compile of the transformer blocks, in place.

Blocks are compiled one by one: each block's body (TransformerBlock.body: attention and FFN,
after the block's Python forward has made this step's reduce_flop draws) becomes a compiled
function, and parameter names and module structure stay as they are, so the same call
serves the data-parallel model and every pipeline stage, and activation checkpointing still
wraps whole blocks (the body has no graph break for the recomputation to trip on). Under tensor parallelism the collectives
are traced into the graphs (parallel/collectives.py), so a block is one graph there too.
The per-function recompile limit is raised so that every graph a function needs (shapes of
qkv, proj, fc1, fc2; training and evaluation; guided draws) is kept instead of falling back
to eager after 8; with `collectives_in_graphs=False` a block compiles as the pieces between
its collectives (the behaviour before, for comparison) and needs that most. Guided blocks compile too: the guide weight a enters the graphs
as a tensor (GuideState.alpha_tensor), not a constant, and the reduce_flop draws are made
before the body and handed to it as bools (model/block.py), so a guided FFN has at most one graph
per combination of its layers' draws, shared by every block, and a step with new draws or a
new a recompiles nothing.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..parallel.collectives import bypass_autograd_of_traced_collectives
from ..parallel.regions import keep_collectives_out_of_compiled_graphs
from ..structured.linear import keep_draws_out_of_compiled_graphs
from .block import TransformerBlock


# graphs per compiled function: 4 linears x (dense first FFN, structured) x (train, eval), twice
# over; guided: x 4 draw combinations of fc1 and fc2
RECOMPILE_LIMIT = 64


def compile_blocks(module: nn.Module, collectives_in_graphs: bool = True, mode: Optional[str] = None,
                   cpp_wrapper: bool = False, blocks_per_region: int = 1, keep_fp8_casts: bool = False) -> int:
    """Compile every TransformerBlock under `module`; returns how many were compiled.
    mode: torch.compile's (None = default; "reduce-overhead" replays CUDA graphs).
    cpp_wrapper: Inductor's C++ wrapper launches each graph's kernels and GEMMs (its Python
    wrapper spends ~10-25 us of host per launch: an emulated tensor-parallel rank's blocks alone
    take 0.79-0.89x the time through the C++ one, its whole training step the same).
    blocks_per_region: consecutive blocks compiled as one region (compile_block_groups), where
    grouping_refusal finds nothing against it; otherwise each block's body is its own region.
    keep_fp8_casts: backward reuses the forward's FP8 casts instead of making them again
    (fp8/keep_casts.py, training.fp8.keep_casts)."""
    blocks = [m for m in module.modules() if isinstance(m, TransformerBlock)]
    if not collectives_in_graphs:
        keep_collectives_out_of_compiled_graphs()
    else:  # the graphs call them below autograd: ~20 us less per call and per wait
        bypass_autograd_of_traced_collectives()
    keep_draws_out_of_compiled_graphs()
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, RECOMPILE_LIMIT)
    if cpp_wrapper:
        compile_backward_with_forward()
    options = compile_options(mode, cpp_wrapper, keep_fp8_casts)
    if blocks_per_region > 1 and grouping_refusal(module, mode) is None:
        compile_block_groups(module, options, blocks_per_region)
        return len(blocks)
    for block in blocks:  # the body: the draws are made before it, in Python (model/block.py)
        block.body = torch.compile(block.body, dynamic=False, options=options)
    return len(blocks)


def grouping_refusal(module: nn.Module, mode: Optional[str]) -> Optional[str]:
    """Why `module`'s blocks cannot be compiled several to a region (compile_block_groups), or None."""
    if not callable(getattr(module, "use_block_groups", None)):
        return "the pipeline engine calls each block itself"
    if mode is not None:
        return "CUDA graphs replay each block's region"
    if any(getattr(m, "guide", None) is not None for m in module.modules()):
        return "guided blocks draw in Python between blocks"
    return None


def compile_block_groups(module: nn.Module, options: dict, size: int) -> None:
    """Compile `size` consecutive blocks as one region instead of one region per block. Each
    region call costs host time of its own, whatever the block's size: the guards, AOTAutograd's
    runtime wrappers and an autograd node in forward and backward (~270 us a block forward and
    backward on a CPU, measured with tiny blocks). A tensor-parallel rank, whose blocks are a
    1/t of a data-parallel rank's, waits on that host time: four blocks to a region made an
    emulated TP4 SP rank 1.43x as fast on an H100 (whose host is slower) and 1.04x and 0.89x on
    two H200s (docs/performance.md), so "auto" takes 4 at tensor > 1 (config.py). Every group of the same blocks'
    shapes shares the graph (the blocks are its inputs), so compiling costs about `size` blocks'
    worth once. Unguided models only: guided blocks make their reduce_flop draws in Python
    between blocks (model/block.py). (torch's nested_compile_region would trace a block once for
    the whole stack, but refuses inputs that alias each other, and the parameters are views of
    the optimizer's flat buffers: "Input-to-input aliasing", torch 2.13 with ZeRO 1 on a CPU.)"""
    def run_block_group(blocks: tuple, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = block.body(x, None, block.ffn.draws())
        return x

    module.use_block_groups(torch.compile(run_block_group, dynamic=False, options=options), size)


def compile_backward_with_forward() -> None:
    """Have AOTAutograd lower each backward graph when it compiles the forward (process-wide).
    By default the backward is lowered at its first call, after torch.compile's options have
    been taken off Inductor's config again: torch 2.11 then lowers it for the C++ wrapper
    without the cubins the wrapper launches, and the first backward fails ("CudaKernelParamCache
    not populated", found on an H100; torch 2.13 re-applies the options itself)."""
    import torch._functorch.config as functorch_config
    if hasattr(functorch_config, "force_non_lazy_backward_lowering"):
        functorch_config.force_non_lazy_backward_lowering = True


def compile_options(mode: Optional[str], cpp_wrapper: bool, keep_fp8_casts: bool = False) -> dict:
    """torch.compile takes a mode or options, not both: the mode's options, plus the wrapper
    and the FP8 casts' pass where asked."""
    from torch._inductor import list_mode_options
    from ..fp8.keep_casts import inductor_options
    return {**list_mode_options(mode or "default"), **({"cpp_wrapper": True} if cpp_wrapper else {}),
            **inductor_options(keep_fp8_casts)}


def compiled_graph_count() -> int:
    """Graphs torch.compile has made in this process so far (each recompile counts): a step in
    which it rises paid for compiling (benchmarks/sgt_phase.py leaves such steps out)."""
    from torch._dynamo.utils import counters
    return counters["stats"]["unique_graphs"]
