#!/usr/bin/env python
"""Check and look inside an indexed dataset (ours or Megatron-LM's).

    python tools/inspect_data.py out/corpus_text_document                    # stats + full check
    python tools/inspect_data.py PREFIX --tokenizer-model tok.model --show 2  # decode documents
    python tools/inspect_data.py PREFIX --tokenizer-model tok.model --samples 2 --seq-length 1024

Exits with status 1 and a message naming the file when the pair is truncated or corrupt, and
with status 2 and one line on a bad command line or tokenizer model, before the check runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.data.indexed_dataset import IndexedDataset, IndexedDatasetError  # noqa: E402


def stats(ds: IndexedDataset) -> dict:
    sizes = np.asarray(ds.sizes, dtype=np.int64)
    out = {"prefix": ds.prefix, "dtype": ds.dtype.name, "documents": ds.num_documents,
           "sequences": len(ds), "tokens": int(sizes.sum()),
           "bin_bytes": os.path.getsize(ds.prefix + ".bin"), "idx_bytes": os.path.getsize(ds.prefix + ".idx")}
    if len(sizes):
        out.update(min_tokens=int(sizes.min()), mean_tokens=float(sizes.mean()),
                   median_tokens=float(np.median(sizes)), max_tokens=int(sizes.max()),
                   empty_documents=int((sizes == 0).sum()))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefix", help="dataset prefix (without .bin/.idx)")
    p.add_argument("--tokenizer-model", default=None, help="to decode documents and samples")
    p.add_argument("--show", type=int, default=0, help="decode the first N documents")
    p.add_argument("--samples", type=int, default=0, help="decode the first N training samples")
    p.add_argument("--seq-length", type=int, default=1024)
    p.add_argument("--quick", action="store_true", help="skip the O(documents) offset check")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    args = p.parse_args(argv)
    for name in ("show", "samples"):
        if getattr(args, name) < 0:
            p.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.seq_length <= 0:
        p.error(f"--seq-length must be positive, got {args.seq_length}")
    if (args.show or args.samples) and not args.tokenizer_model:
        p.error("--show / --samples need --tokenizer-model")
    tok = None
    if args.tokenizer_model:   # before the O(documents) check: a bad model is one line, not a traceback
        from megatron_sffn.data.tokenizer import SentencePieceTokenizer, TokenizerError
        try:
            tok = SentencePieceTokenizer(args.tokenizer_model)
        except TokenizerError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        ds = IndexedDataset(args.prefix, verify=not args.quick)
    except IndexedDatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    info = stats(ds)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            print(f"{key:<16} {value:,.1f}" if isinstance(value, float) else f"{key:<16} {value:,}"
                  if isinstance(value, int) else f"{key:<16} {value}")
    if tok is not None:
        if int(ds.sizes.max(initial=0)) and ds.num_tokens and max(int(ds[i].max(initial=0)) for i in
                                                                   range(min(len(ds), 1000))) >= tok.vocab_size:
            print(f"warning: token ids beyond the tokenizer's vocabulary ({tok.vocab_size})", file=sys.stderr)
        for i in range(min(args.show, len(ds))):
            print(f"--- document {i} ({len(ds[i])} tokens)\n{tok.decode(ds[i])}")
        if args.samples:
            from megatron_sffn.data.gpt_dataset import build_gpt_datasets
            train, _, _ = build_gpt_datasets(args.prefix, None, "100,0,0", args.seq_length, 1234,
                                             num_samples=(args.samples, 0, 0), show_progress=False)
            for i in range(args.samples):
                tokens = train[i]["tokens"]
                print(f"--- sample {i} ({len(tokens)} tokens, {int((tokens == tok.eos_id).sum())} "
                      f"document ends)\n{tok.decode(tokens)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
