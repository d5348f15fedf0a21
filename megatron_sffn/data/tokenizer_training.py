"""Training a sentencepiece model on the same inputs that preprocessing reads.

Defaults follow the Llama tokenizer: BPE, byte fallback (no unknown characters), digits
split, identity normalization and whitespace kept as is, so that decode(encode(text)) is
exactly the text; ids 0-3 are unk, bos, eos (the end-of-document token) and pad.
"""
from __future__ import annotations

import os
from typing import Dict, Iterator, Optional, Sequence

from .sources import check_sources, iter_texts, resolve_inputs


def training_sentences(texts: Iterator[str], max_bytes: int) -> Iterator[str]:
    """Cut documents into lines, and over-long lines at spaces, so that no piece of text is
    dropped by sentencepiece's sentence-length limit."""
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            while len(line.encode("utf-8")) > max_bytes:
                cut = line.rfind(" ", 0, max_bytes // 4)
                cut = cut if cut > 0 else max_bytes // 4
                yield line[:cut]
                line = line[cut:]
            if line.strip():
                yield line


def train_tokenizer(inputs: Sequence[str], json_keys: Sequence[str], vocab_size: int,
                    model_prefix: str, model_type: str = "bpe", byte_fallback: bool = True,
                    character_coverage: float = 0.99995, max_sentences: int = 5_000_000,
                    max_documents: Optional[int] = None, pad_token: bool = True,
                    num_threads: Optional[int] = None, seed_sentencepiece_size: int = 1_000_000,
                    max_sentence_bytes: int = 4192, verbose: bool = False,
                    stats: Optional[Dict[str, int]] = None) -> str:
    """Train and write `<model_prefix>.model` / `.vocab`; returns the .model path."""
    import sentencepiece as spm
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"--model-type {model_type!r}: use bpe or unigram")
    if vocab_size < 8 + (256 if byte_fallback else 0):
        raise ValueError(f"--vocab-size {vocab_size} is too small"
                         f"{' for byte fallback (256 byte pieces)' if byte_fallback else ''}")
    if not 0.98 <= character_coverage <= 1.0:   # sentencepiece's own bounds, found only after reading
        raise ValueError(f"--character-coverage must be in [0.98, 1], got {character_coverage:g}")
    for flag, value in (("--max-sentences", max_sentences), ("--max-documents", max_documents),
                        ("--threads", num_threads)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    sources = resolve_inputs(inputs)
    check_sources(sources, json_keys)
    directory = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(directory, exist_ok=True)

    stats = stats if stats is not None else {}
    texts = iter_texts(sources, json_keys, stats)
    if max_documents is not None:
        texts = (t for t, _ in zip(texts, range(max_documents)))
    sentences = training_sentences(texts, max_sentence_bytes)
    spm.SentencePieceTrainer.Train(
        sentence_iterator=sentences,
        model_prefix=model_prefix,
        model_type=model_type,
        vocab_size=vocab_size,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=3 if pad_token else -1,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=max_sentence_bytes,
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=0 if verbose else 1,
    )
    return model_prefix + ".model"
