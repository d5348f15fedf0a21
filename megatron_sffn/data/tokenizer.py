"""SentencePiece tokenizer: the one object that turns text into token ids and back.

Training, preprocessing and generation all load the `.model` file through this class, so
the end-of-document id written by `--append-eod` is the same one the model is trained on.
"""
from __future__ import annotations

import os
from typing import List, Sequence

import sentencepiece as spm


class TokenizerError(ValueError):
    """The tokenizer model is missing, unreadable, or lacks a token the pipeline needs."""


class SentencePieceTokenizer:
    def __init__(self, model_path: str):
        if not os.path.isfile(model_path):
            raise TokenizerError(f"tokenizer model {model_path} not found "
                                 "(train one with tools/train_tokenizer.py)")
        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_path)
        except Exception as error:  # sentencepiece raises OSError / RuntimeError
            raise TokenizerError(f"tokenizer model {model_path} is not a sentencepiece model: "
                                 f"{error}") from error
        if self._sp.eos_id() < 0:
            raise TokenizerError(f"tokenizer model {model_path} has no end-of-sentence token; "
                                 "the pipeline uses it as the end-of-document token")

    # ---- the interface the rest of the system calls -------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._sp.GetPieceSize()

    @property
    def bos_id(self) -> int:
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-document token: what `--append-eod` writes after every document."""
        return self._sp.eos_id()

    eod_id = eos_id

    @property
    def pad_id(self) -> int:
        """The model's pad id, or eos when the model defines none (as Llama's does not)."""
        pad = self._sp.pad_id()
        return pad if pad >= 0 else self.eos_id

    @property
    def unk_id(self) -> int:
        return self._sp.unk_id()

    def encode(self, text: str) -> List[int]:
        return self._sp.Encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> List[List[int]]:
        """Encode many texts in one C++ call (no per-text Python overhead)."""
        return self._sp.Encode(list(texts), num_threads=num_threads)

    def decode(self, ids) -> str:
        return self._sp.Decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.IdToPiece(int(token_id))

    def __repr__(self) -> str:
        return (f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size}, "
                f"bos={self.bos_id}, eos={self.eos_id}, pad={self.pad_id})")
