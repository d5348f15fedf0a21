"""The GPT model laid out for a DeepSpeed engine, from the same pieces as GPTModel.

Pipeline (DeepSpeed PipelineModule, one LayerSpec per piece):
  0        embedding       TiedLayerSpec "embedding" (VocabParallelEmbedding)
  1..L     blocks.0..L-1   LayerSpec(TransformerBlock)
  L+1      final_norm      LayerSpec(Norm)
  L+2      head            TiedLayerSpec "embedding" calling .logits (tied), or LMHead
  loss     vocab-parallel cross-entropy, mean over tokens
Only the stage's own pieces are built; each is initialised with `initialize_piece` under
the same layout-free prefix GPTModel.initialize uses, so any layout starts from the model
one process would build. `layout_free_names` maps the pipeline's parameter names
("3.ffn.fc1.structure.weight_v", "tied_modules.embedding.weight") to GPTModel's
("blocks.2.ffn.fc1.structure.weight_v", "embedding.weight").

Without pipeline parallelism the engine trains `CheckpointedGPT`: GPTModel itself (same
parameter names) whose forward also returns the loss and can checkpoint blocks.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from deepspeed.pipe import LayerSpec, PipelineModule, TiedLayerSpec
from torch.utils.checkpoint import checkpoint

from ..config import Config, ModelConfig
from ..parallel.cross_entropy import vocab_parallel_cross_entropy
from ..parallel.full_state import mark_tensor_parallel_params
from ..parallel.mappings import TensorParallel
from ..parallel.sequence import mark_sequence_parallel_params
from ..structured.guide import GuideState
from .block import TransformerBlock
from .gpt import GPTModel
from .init import initialize_piece
from .layers import LMHead, Norm, VocabParallelEmbedding

TIED_KEY = "embedding"
# Chunks made only of these classes are checkpointed. A chunk holding the head is not: its
# output, the V-wide logits, is kept for the loss anyway, so recomputing it saves nothing.
CHECKPOINTABLE = ["TransformerBlock", "VocabParallelEmbedding", "Norm"]


class VocabParallelLoss:
    """loss_fn(logits, labels) of the last stage: mean token cross-entropy over the local vocab slices."""

    def __init__(self, tp: TensorParallel):
        self.tp = tp

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return vocab_parallel_cross_entropy(logits, labels, self.tp).mean()


def tied_head_logits(embedding: VocabParallelEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    return embedding.logits(hidden)


def non_reentrant_checkpoint(function, *args):
    return checkpoint(function, *args, use_reentrant=False)


def checkpoint_interval(cfg: Config) -> int:
    return cfg.training.checkpoint_interval if cfg.training.activation_checkpointing else 0


def layer_prefixes(m: ModelConfig) -> List[str]:
    """The layout-free name of every entry of the pipeline's layer list, in order."""
    head = "embedding" if m.tie_embeddings else "head"
    return ["embedding"] + [f"blocks.{i}" for i in range(m.num_layers)] + ["final_norm", head]


def layer_specs(m: ModelConfig, tp: TensorParallel, guided: bool, guide_state: Optional[GuideState]) -> list:
    if m.tie_embeddings:
        embedding = TiedLayerSpec(TIED_KEY, VocabParallelEmbedding, m.vocab_size, m.hidden_size, tp,
                                  tied_weight_attr="weight")
        head = TiedLayerSpec(TIED_KEY, VocabParallelEmbedding, m.vocab_size, m.hidden_size, tp,
                             forward_fn=tied_head_logits, tied_weight_attr="weight")
    else:
        embedding = LayerSpec(VocabParallelEmbedding, m.vocab_size, m.hidden_size, tp)
        head = LayerSpec(LMHead, m.vocab_size, m.hidden_size, tp)
    blocks = [LayerSpec(TransformerBlock, m, i, tp, guided, guide_state) for i in range(m.num_layers)]
    return [embedding, *blocks, LayerSpec(Norm, m.norm, m.hidden_size, m.norm_eps, m.bias), head]


class GPTPipeline(PipelineModule):
    """PipelineModule that balances stages by the parameters of the structured model.

    Guides are transient (dropped when a reaches 0, and the engine rebuilt), so they are
    left out of the count: the stage boundaries are the same with and without them, and a
    rebuilt engine holds exactly the layers the old one held.
    """

    def _count_layer_params(self):
        counts = []
        for spec in self._layer_specs:
            layer = spec.build() if isinstance(spec, LayerSpec) else spec
            counts.append(sum(p.numel() for n, p in layer.named_parameters()
                              if p.requires_grad and ".guide." not in f".{n}")
                          if isinstance(layer, nn.Module) else 0)
        return counts


def local_pieces(module) -> Dict[str, Tuple[str, nn.Module]]:
    """{pipeline name prefix: (layout-free prefix, built module)} for this stage's pieces."""
    prefixes = module.layout_free_prefixes
    pieces = {}
    for idx in range(module._local_start, module._local_stop):
        if str(idx) in module._modules:
            pieces[str(idx)] = (prefixes[idx], module._modules[str(idx)])
        elif prefixes[idx] == "embedding" and TIED_KEY in module.tied_modules:
            pieces[f"tied_modules.{TIED_KEY}"] = ("embedding", module.tied_modules[TIED_KEY])
    return pieces


def layout_free_names(module) -> Dict[str, str]:
    """{pipeline parameter name: GPTModel parameter name} for this stage's parameters."""
    names = {}
    for pipe_prefix, (free_prefix, piece) in local_pieces(module).items():
        for name, _ in piece.named_parameters():
            names[f"{pipe_prefix}.{name}"] = f"{free_prefix}.{name}"
    return names


def boundary_shape(m: ModelConfig, sequence_shards: int, micro_batch: int) -> Tuple[int, int, int]:
    """What crosses a stage boundary: the hidden states of one micro-batch, [micro-batch,
    tokens, hidden], a tensor rank's 1/t of the tokens under sequence parallelism (DeepSpeed
    sends their shape first; tools/emulate_rank.py, which has no sender, asks here)."""
    return micro_batch, m.seq_length // sequence_shards, m.hidden_size


def build_pipeline_module(cfg: Config, state, guide_state: Optional[GuideState], guided: bool,
                          initialize: bool = True):
    """A deepspeed.pipe.PipelineModule over state.topology, initialised layout-independently
    (initialize=False leaves the values to the caller, e.g. when copying from another engine)."""
    m = cfg.model
    module = GPTPipeline(
        layers=layer_specs(m, state.tp, guided, guide_state), topology=state.topology,
        loss_fn=VocabParallelLoss(state.tp), partition_method=cfg.parallel.partition_method,
        activation_checkpoint_interval=checkpoint_interval(cfg),
        activation_checkpoint_func=non_reentrant_checkpoint, checkpointable_layers=list(CHECKPOINTABLE))
    module.layout_free_prefixes = layer_prefixes(m)
    module.guide_state = guide_state
    module.boundary_shape = functools.partial(boundary_shape, m, state.tp.size if cfg.parallel.sequence_parallel else 1)
    if initialize:
        for free_prefix, piece in {id(p): (f, p) for f, p in local_pieces(module).values()}.values():
            initialize_piece(piece, free_prefix, cfg.training.seed, m.init_std, m.ffn.init)
    mark_tensor_parallel_params(module, state.tp)
    mark_sequence_parallel_params(module, state.tp)
    return module


class CheckpointedGPT(GPTModel):
    """GPTModel for the data/tensor-parallel engine: forward(ids, labels) returns the mean
    loss, and with activation checkpointing every `interval` blocks are recomputed in backward."""

    def __init__(self, cfg: ModelConfig, tp: TensorParallel, guided: bool, guide_state: Optional[GuideState],
                 interval: int = 0):
        super().__init__(cfg, tp, guided, guide_state)
        self.interval = interval
        self.block_group, self.group_size = None, 1

    def use_block_groups(self, run, size: int) -> None:
        """run(blocks, x) -> x runs a tuple of up to `size` consecutive blocks in one call (the
        compiled group of model/compile.py)."""
        self.block_group, self.group_size = run, size

    def _run_blocks(self, start: int, stop: int, x: torch.Tensor) -> torch.Tensor:
        if self.block_group is not None:
            for first in range(start, stop, self.group_size):
                x = self.block_group(tuple(self.blocks[first:min(first + self.group_size, stop)]), x)
            return x
        for block in self.blocks[start:stop]:
            x = block(x)
        return x

    def forward(self, ids: torch.Tensor, labels: Optional[torch.Tensor] = None, **kwargs):
        if labels is None or kwargs:
            return super().forward(ids, **kwargs)
        x = self.embedding(ids)
        step = self.interval or len(self.blocks)
        for start in range(0, len(self.blocks), step):
            run = functools.partial(self._run_blocks, start, start + step)
            x = non_reentrant_checkpoint(run, x) if self.interval and self.training else run(x)
        x = self.final_norm(x)
        logits = self.head(x) if self.head is not None else self.embedding.logits(x)
        return vocab_parallel_cross_entropy(logits, labels, self.tp).mean()


def build_data_parallel_module(cfg: Config, state, guide_state: Optional[GuideState], guided: bool,
                               initialize: bool = True) -> CheckpointedGPT:
    """The model when pipeline size is 1: one module holding every piece (ZeRO 0-3 allowed)."""
    model = CheckpointedGPT(cfg.model, state.tp, guided, guide_state, checkpoint_interval(cfg))
    model.to(torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu")
    if initialize:
        model.initialize(cfg.training.seed)
    mark_tensor_parallel_params(model, state.tp)
    mark_sequence_parallel_params(model, state.tp)
    return model
