"""CUDA-graph decoding: capture the one-token decode step once, replay it for every token.

Eager decoding is host-bound (1.3B: ~90 ms per token with the GPU mostly idle, Python
launching hundreds of small kernels). A graph launches the whole step at once, but it bakes
in every shape, address and scalar seen at capture. So the step runs in the KV cache's
fixed-shape mode (model/attention.py, `KVCache.column`): what changes per token, the token
ids and the cache column, lives in static device tensors updated in place before each
replay, and the positions and validity mask are derived from them inside the graph.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..model.attention import KVCache
from ..model.gpt import GPTModel


def unavailable_reason(device) -> Optional[str]:
    """Why CUDA graphs cannot decode on `device`, or None when they can."""
    device = torch.device(device)
    if not torch.cuda.is_available():
        return "CUDA graphs need CUDA, which is not available here"
    if device.type != "cuda":
        return f"CUDA graphs need the model on a CUDA device, it is on {device.type}"
    return None


def decode_step(model: GPTModel, cache: KVCache, ids: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """Logits (B, V) for one token per row, ids (B, 1), stored at cache column `column` ((1,)
    long tensor): the function the graph captures. Run again with the same inputs it rewrites
    the same column, so warm-up and capture leave the cache as a single call would."""
    cache.column = column
    try:
        return model(ids, cache)[:, -1]
    finally:
        cache.column = None


class DecodeGraph:
    """`decode_step` on static inputs, as a callable: tokens (B,) -> next logits (B, V).

    graph=True captures the step into a torch.cuda.CUDAGraph at the first call (after warm-up
    on a side stream, as the torch docs prescribe) and replays it at every call; graph=False
    runs the same step eagerly (how the CPU tests check it). The returned logits tensor is
    overwritten by the next call. Python side effects of the step (pre-merge's call counters)
    happen at warm-up and capture only; the FFN path captured is the one picked for B tokens.
    """

    def __init__(self, model: GPTModel, cache: KVCache, graph: bool = True, warmup: int = 3):
        self.model, self.cache, self.use_graph, self.warmup = model, cache, graph, warmup
        device = cache.valid.device
        self.ids = torch.zeros(cache.valid.shape[0], 1, dtype=torch.long, device=device)
        self.column = torch.zeros(1, dtype=torch.long, device=device)
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.logits: Optional[torch.Tensor] = None

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.cache.length >= self.cache.max_len:
            raise ValueError(f"KV cache holds {self.cache.max_len} positions; {self.cache.length + 1} requested")
        self.ids.copy_(tokens.reshape(-1, 1))
        self.column.fill_(self.cache.length)  # a device-side fill: no Python int enters the graph
        if not self.use_graph:
            logits = decode_step(self.model, self.cache, self.ids, self.column)
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
            logits = self.logits
        self.cache.length += 1
        return logits

    def _capture(self) -> None:
        # Warm-up runs the lazy initialisation (cuBLAS handles and workspaces, Triton compiles)
        # outside the capture; on a side stream, as the torch docs' CUDA-graph recipe does.
        with torch.cuda.device(self.ids.device):
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    decode_step(self.model, self.cache, self.ids, self.column)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = decode_step(self.model, self.cache, self.ids, self.column)
