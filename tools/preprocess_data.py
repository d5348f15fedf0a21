#!/usr/bin/env python
"""Tokenize raw text into Megatron-compatible indexed datasets (<prefix>_<key>_document.bin/.idx).

    python tools/preprocess_data.py --input data.jsonl.gz --json-keys text \\
        --tokenizer-model tok.model --output-prefix out/corpus --workers 8 --append-eod
    python tools/preprocess_data.py --input tiiuae/falcon-refinedweb --json-keys content ...
    python tools/preprocess_data.py ... --split 99,1      # out/corpus_{train,valid}_text_document

--input takes jsonl, jsonl.gz, jsonl.xz, parquet, folders or globs of those, a dataset saved with
`datasets`' save_to_disk, or a dataset name for `datasets.load_dataset` (streamed).
Bad records (not UTF-8, not JSON, missing or non-string field, empty) are skipped and
counted; --strict stops at the first one instead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_sffn.data.preprocess import (PreprocessConfig, PreprocessError,  # noqa: E402
                                           preprocess)
from megatron_sffn.data.sources import InputError  # noqa: E402
from megatron_sffn.data.tokenizer import TokenizerError  # noqa: E402


def parse_split(text: str):
    try:
        return [float(x) for x in text.replace("/", ",").split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--split {text!r}: expected weights like 99,1 or 98,1,1")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("input data")
    g.add_argument("--input", nargs="+", required=True,
                   help="jsonl / jsonl.gz / jsonl.xz / parquet files, folders, globs, or a `datasets` name or path")
    g.add_argument("--json-keys", nargs="+", default=["text"],
                   help="fields holding the text (one output dataset per field); RefinedWeb: content")
    g.add_argument("--hf-split", default="train", help="split of a `datasets` input")
    g.add_argument("--hf-config", default=None, help="configuration name of a `datasets` input")
    g.add_argument("--no-streaming", action="store_true",
                   help="download a hub dataset instead of streaming it")
    g.add_argument("--max-documents", type=int, default=None, help="stop after this many input records")
    g = p.add_argument_group("tokenization")
    g.add_argument("--tokenizer-model", required=True, help="sentencepiece .model file")
    g.add_argument("--tokenizer-type", default="SentencePieceTokenizer",
                   choices=["SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"],
                   help="accepted for Megatron-LM command-line compatibility; all mean sentencepiece")
    g.add_argument("--append-eod", action="store_true",
                   help="append the end-of-document token (the tokenizer's eos) to every document")
    g = p.add_argument_group("output data")
    g.add_argument("--output-prefix", required=True, help="output path without the _<key>_document suffix")
    g.add_argument("--split", type=parse_split, default=None,
                   help="write train/valid[/test] datasets with these document weights, e.g. 99,1")
    g.add_argument("--split-seed", type=int, default=1234, help="seed of the per-document split assignment")
    g = p.add_argument_group("runtime")
    g.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                   help="tokenizer worker processes (0 = tokenize in the main process)")
    g.add_argument("--batch-bytes", type=int, default=1 << 20, help="text per work unit sent to a worker")
    g.add_argument("--strict", action="store_true", help="stop at the first bad record instead of skipping it")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--log-interval", type=int, default=None,
                   help="accepted for Megatron-LM command-line compatibility (the progress bar replaces it)")
    g.add_argument("--summary-json", default=None, help="also write the summary to this JSON file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    config = PreprocessConfig(
        inputs=args.input, json_keys=args.json_keys, tokenizer_model=args.tokenizer_model,
        output_prefix=args.output_prefix, workers=args.workers, append_eod=args.append_eod,
        split=args.split, split_seed=args.split_seed, strict=args.strict, batch_bytes=args.batch_bytes,
        hf_split=args.hf_split, hf_config=args.hf_config,
        streaming=False if args.no_streaming else None, max_documents=args.max_documents,
        show_progress=not args.no_progress)
    try:
        summary = preprocess(config)
    except (InputError, TokenizerError, PreprocessError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output written (temporary files removed)", file=sys.stderr)
        return 130
    print(summary.report())
    if args.summary_json:
        with open(args.summary_json, "w") as out:
            json.dump({**summary.__dict__, "documents_per_second": summary.documents_per_second,
                       "tokens_per_second": summary.tokens_per_second}, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
