"""What the inference tools (generate.py, evaluate.py) share: a single-rank model from any
checkpoint, and the tokenizer it was trained with.

A consolidated folder is read directly; a run folder or a DeepSpeed checkpoint step folder
is consolidated on the fly (weights only, in a temporary folder, on local CPU processes in
the layout it was saved in: see megatron_sffn/checkpoint/convert.py).
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_sffn.checkpoint.convert import USER_ERRORS, load_single_rank, tokenizer_path  # noqa: E402,F401
from megatron_sffn.config import Config  # noqa: E402


def load_single_rank_checkpoint(path: str, device="cpu", dtype=torch.float32, verbose: bool = False
                                ) -> Tuple[object, Config, Dict]:
    """(GPTModel in eval mode on `device`, its run Config, the consolidated meta: step, tokens, guide state)."""
    return load_single_rank(path, device=device, dtype=dtype, verbose=verbose)


def load_single_rank_model(path: str, device="cpu", dtype=torch.float32) -> Tuple[object, Config]:
    """(GPTModel, Config) from a consolidated folder, a run folder or a DeepSpeed checkpoint."""
    model, cfg, _ = load_single_rank_checkpoint(path, device, dtype)
    return model, cfg


def resolve_tokenizer(name: Optional[str], cfg: Config):
    """The SentencePieceTokenizer of `name` ("embedded" = the bundled model), default the run's own."""
    from megatron_sffn.data.tokenizer import SentencePieceTokenizer
    override = None if name in (None, cfg.data.tokenizer_model) else name
    return SentencePieceTokenizer(tokenizer_path(cfg, override))
