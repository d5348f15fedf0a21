"""Text generation with a KV cache: greedy, temperature, top-k and top-p sampling, batches.

Prompts of different lengths are left-padded; the cache's validity mask keeps padding out
of attention and positions, so each row decodes as if it were alone. With cuda_graphs=True
the one-token steps after the prompt replay a captured CUDA graph (cuda_graph.py).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from ..model.gpt import GPTModel
from .cuda_graph import DecodeGraph, unavailable_reason


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off
    seed: int = 0
    stop_token: Optional[int] = None
    vocab_limit: Optional[int] = None  # never emit ids >= this (the tokenizer's size, when the model's vocab is padded)


def check_sampling(sampling: SamplingConfig) -> None:
    """ValueError naming the setting that no sampler can honour (a negative temperature would
    flip the distribution, top_p outside (0, 1] keeps nothing or everything silently)."""
    if sampling.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {sampling.max_new_tokens}")
    if sampling.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {sampling.temperature:g}")
    if sampling.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {sampling.top_k}")
    if not 0 < sampling.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {sampling.top_p:g}")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k set and outside the smallest nucleus of mass top_p."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def next_tokens(logits: torch.Tensor, sampling: SamplingConfig, gen: torch.Generator) -> torch.Tensor:
    if sampling.vocab_limit is not None and sampling.vocab_limit < logits.shape[-1]:
        logits = logits[..., :sampling.vocab_limit]
    if sampling.temperature <= 0.0:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / sampling.temperature, sampling.top_k, sampling.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(model: GPTModel, prompts: Sequence[Sequence[int]], sampling: SamplingConfig,
             pad_id: int = 0, cuda_graphs: bool = False) -> List[List[int]]:
    """Continue every prompt by up to max_new_tokens; returns only the new tokens per prompt.

    cuda_graphs: decode through a captured CUDA graph (same tokens, less host time per
    token); where CUDA is not usable it warns and decodes eagerly.
    """
    if model.tp.size != 1:
        raise ValueError("generate() runs a single-rank model; consolidate the checkpoint first")
    check_sampling(sampling)
    device = next(model.parameters()).device
    if not prompts:
        raise ValueError("no prompts to continue")
    batch, longest = len(prompts), max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    outside = [t for p in prompts for t in p if not 0 <= t < model.cfg.vocab_size]
    if outside:
        raise ValueError(f"prompt token id {outside[0]} is outside the model's vocabulary of {model.cfg.vocab_size}: "
                         "the tokenizer does not match the checkpoint")
    ids = torch.full((batch, longest), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(batch, longest, dtype=torch.bool, device=device)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt):] = torch.tensor(list(prompt), device=device)
        valid[row, longest - len(prompt):] = True
    cache = model.new_cache(batch, longest + sampling.max_new_tokens)
    gen = torch.Generator(device=device).manual_seed(sampling.seed)
    step = lambda token: model(token[:, None], cache)[:, -1]  # noqa: E731
    if cuda_graphs:
        reason = unavailable_reason(device)
        if reason is None:
            step = DecodeGraph(model, cache)
        else:
            warnings.warn(f"{reason}; decoding eagerly")
    logits = model(ids, cache, valid)[:, -1]
    out = [[] for _ in range(batch)]
    done = [False] * batch
    for i in range(sampling.max_new_tokens):
        token = next_tokens(logits, sampling, gen)
        values = token.tolist()  # one device sync per step, not one per row
        for row in range(batch):
            if not done[row]:
                out[row].append(values[row])
        if sampling.stop_token is not None:
            done = [d or v == sampling.stop_token for d, v in zip(done, values)]
            if all(done):
                break
        if i + 1 < sampling.max_new_tokens:  # the last token's logits are never used
            logits = step(token)
    return out
