"""Predicted peak memory per GPU of one layout: every pipeline stage, the largest wins.

Per local parameter (guides included while they exist, i.e. for self-guided configs), bytes:
  fused optimizer (the default for bf16 ZeRO 0/1; training/master_optimizer.py)
      2 bf16 weight + 4 fp32 main gradient + 12 fp32 master and two moments (divided by the
      data size under ZeRO 1). The main gradients exist only from a step's first gradient to
      its update (per-bucket buffers): with one micro-batch per step and no pipeline they
      fill while backward frees the activations, so they count only where they outgrow them;
      with more micro-batches (accumulation, a pipeline's schedule) they are held through the
      later forwards, so they count whole
  DeepSpeed's optimizer: ZeRO 0  2 + 2 bf16 gradient + 12
                         ZeRO 1  2 + 2 + 4 fp32 accumulation + 12 / D  (BF16_Optimizer)
                         ZeRO 2  2 + (4 + 12) / D, plus its bf16 reduce bucket
Activations (activations.py) for the micro-batches a stage holds at once: 1F1B keeps up to
`pipeline - stage` of them in flight (one without a pipeline); with activation
checkpointing each keeps only its chunks' inputs, and one chunk is recomputed at a time;
plus one block's backward working set.
The last stage adds the logits of one micro-batch. That sum is the prediction of
torch.cuda.max_memory_allocated; what must fit adds `Hardware.overhead_gb` (CUDA context,
NCCL buffers, workspaces, allocator slack, none of which torch's counter sees).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from typing import List, Sequence

from ..config import ModelConfig
from . import activations as act
from .hardware import GIB, Hardware
from .layout import Layout
from .pieces import Piece

ZERO2_BUCKET_BYTES = 5e8 * 2  # DeepSpeed's default reduce_bucket_size (elements), bf16


def stage_bounds(weights: Sequence[int], stages: int) -> List[int]:
    """Layer-list boundaries of each stage, as DeepSpeed's 'parameters' partition computes them."""
    if stages == 1:
        return [0, len(weights)]
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        from deepspeed.runtime.utils import partition_balanced  # its import logs to stdout (--json)
    return [int(b) for b in partition_balanced(list(weights), stages)]


def stage_pieces(pieces: Sequence[Piece], pipeline: int) -> List[List[Piece]]:
    """The pieces of each pipeline stage (guides left out of the balance, as GPTPipeline does)."""
    bounds = stage_bounds([p.params for p in pieces], pipeline)
    return [list(pieces[bounds[s]:bounds[s + 1]]) for s in range(pipeline)]


def bytes_per_param(implementation: str, zero_stage: int, data: int):
    """(weights, gradients, optimizer state) bytes per local parameter."""
    if implementation == "fused":
        return 2.0, 4.0, 12.0 / (data if zero_stage >= 1 else 1)
    if zero_stage == 0:
        return 2.0, 2.0, 12.0
    if zero_stage == 1:
        return 2.0, 6.0, 12.0 / data
    return 2.0, 4.0 / data, 12.0 / data


@dataclass
class StageMemory:
    stage: int
    blocks: int
    params: int                 # local parameters, guides included
    weights: float              # bytes
    gradients: float
    optimizer: float
    activations: float
    logits: float
    overhead: float

    @property
    def allocated(self) -> float:
        """What torch.cuda.max_memory_allocated should show (the overhead lives outside it)."""
        return self.weights + self.gradients + self.optimizer + self.activations + self.logits

    @property
    def total(self) -> float:
        """What must fit on the GPU."""
        return self.allocated + self.overhead

    def as_gb(self) -> dict:
        out = {k: (v / GIB if isinstance(v, float) else v) for k, v in asdict(self).items()}
        out.update(allocated=self.allocated / GIB, total=self.total / GIB)
        return out


def _chunks(n_blocks: int, interval: int) -> List[int]:
    return [min(interval, n_blocks - i) for i in range(0, n_blocks, interval)]


def stage_activations(m: ModelConfig, layout: Layout, pieces: Sequence[Piece], stage: int, micro_batches: int,
                      checkpoint_interval: int, guided: bool) -> tuple:
    """(activation bytes, logit bytes) stage `stage` holds at its peak."""
    t, sp = layout.tensor, layout.sequence_parallel
    tokens = layout.micro_batch * m.seq_length
    in_flight = min(layout.pipeline - stage, micro_batches)
    blocks = [p for p in pieces if p.kind == "block"]
    per_block = [act.block_bytes_per_token(m, p.ffn_kind, t, sp, guided) for p in blocks]
    last = any(p.kind == "head" for p in pieces)
    buffer = 0.0 if last else act.block_input_bytes_per_token(m, t, sp)  # stage output held for the next
    if layout.activation_checkpointing and blocks:
        chunks = _chunks(len(blocks), checkpoint_interval)
        kept = len(chunks) * act.block_input_bytes_per_token(m, t, sp)
        recomputed = max(sum(per_block[i:i + c]) for i, c in zip(range(0, len(blocks), checkpoint_interval), chunks))
        held = in_flight * tokens * (kept + buffer) + tokens * recomputed
    else:
        held = in_flight * tokens * (sum(per_block) + buffer)
    if blocks:
        held += tokens * act.backward_working_bytes_per_token(m, t)
    logits = 0.0
    if last:
        held += tokens * act.bytes_per_token(act.head_tensors(m), t, sp)
        logits = tokens * act.logit_bytes_per_token(m, t)
    return held, logits


def predict_memory(m: ModelConfig, layout: Layout, pieces: Sequence[Piece], implementation: str,
                   micro_batches: int, checkpoint_interval: int, guided: bool, hw: Hardware,
                   main_gradients_whole_run: bool = False) -> List[StageMemory]:
    """Memory of every pipeline stage of `layout` (pieces: the model's layer list at its tensor size).
    main_gradients_whole_run: the fused optimizer before 2026-11-28, for measurements made then."""
    w, g, o = bytes_per_param(implementation, layout.zero_stage, layout.data)
    stages = []
    for s, local in enumerate(stage_pieces(pieces, layout.pipeline)):
        params = sum(p.params + (p.guide_params if guided else 0) for p in local)
        held, logits = stage_activations(m, layout, local, s, micro_batches, checkpoint_interval, guided)
        bucket = ZERO2_BUCKET_BYTES if (implementation != "fused" and layout.zero_stage == 2) else 0.0
        gradients = g * params + bucket
        if implementation == "fused" and micro_batches == 1 and layout.pipeline == 1 and not main_gradients_whole_run:
            gradients = max(0.0, gradients - held - logits)  # filled as backward frees activations
        stages.append(StageMemory(stage=s, blocks=sum(p.kind == "block" for p in local), params=params,
                                  weights=w * params, gradients=gradients, optimizer=o * params,
                                  activations=held, logits=logits, overhead=hw.overhead_gb * GIB))
    return stages
