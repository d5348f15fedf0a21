#!/usr/bin/env python
"""Train a sentencepiece tokenizer on the inputs preprocessing reads (Llama-style defaults).

    python tools/train_tokenizer.py --input corpus.jsonl.gz --json-keys text \\
        --vocab-size 32000 --model-prefix out/tokenizer          # -> out/tokenizer.model

Defaults: BPE, byte fallback, digits split, identity normalization, ids unk=0 bos=1 eos=2
pad=3. eos is the end-of-document token that preprocess_data.py --append-eod writes.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.data.sources import InputError  # noqa: E402
from megatron_sffn.data.tokenizer import SentencePieceTokenizer  # noqa: E402
from megatron_sffn.data.tokenizer_training import train_tokenizer  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True,
                   help="jsonl / jsonl.gz / jsonl.xz / parquet files, folders, globs, or a `datasets` name or path")
    p.add_argument("--json-keys", nargs="+", default=["text"], help="fields holding the text")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--model-prefix", required=True, help="writes <prefix>.model and <prefix>.vocab")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--no-byte-fallback", action="store_true",
                   help="map unseen characters to <unk> instead of UTF-8 byte pieces")
    p.add_argument("--no-pad", action="store_true", help="no pad token (as in Llama)")
    p.add_argument("--character-coverage", type=float, default=0.99995)
    p.add_argument("--max-sentences", type=int, default=5_000_000,
                   help="lines sampled (uniformly, over all input) for training")
    p.add_argument("--max-documents", type=int, default=None, help="read at most this many documents")
    p.add_argument("--threads", type=int, default=None, help="training threads (default: all cores)")
    p.add_argument("--verbose", action="store_true", help="show sentencepiece's training log")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    stats = {}
    try:
        path = train_tokenizer(args.input, args.json_keys, args.vocab_size, args.model_prefix,
                               model_type=args.model_type, byte_fallback=not args.no_byte_fallback,
                               character_coverage=args.character_coverage,
                               max_sentences=args.max_sentences, max_documents=args.max_documents,
                               pad_token=not args.no_pad, num_threads=args.threads,
                               verbose=args.verbose, stats=stats)
    except (InputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # sentencepiece's own complaints, e.g. vocab too large
        print(f"error: sentencepiece training failed: {error}", file=sys.stderr)
        return 2
    tok = SentencePieceTokenizer(path)
    for reason, count in stats.items():
        if reason != "blank line":
            print(f"skipped {count} records: {reason}", file=sys.stderr)
    print(f"wrote {path} (vocab {tok.vocab_size}, bos={tok.bos_id} eos={tok.eos_id} "
          f"pad={tok.pad_id}) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
