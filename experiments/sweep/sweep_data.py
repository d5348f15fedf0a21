#!/usr/bin/env python
"""The sweep's tokenized corpus in a form small enough to travel with a GPU command, and back.

    # here, after experiments/sweep/build_corpus.py --preset large and tools/train_tokenizer.py:
    python experiments/sweep/sweep_data.py pack --corpus .cache/sweep/large.jsonl.gz \\
        --tokenizer .cache/sweep/large16k_tokenizer.model --carry .sweep_carry --data-dir .cache/sweep/data
    # on the GPU host (experiments/sweep/run_sweep.py --carry .sweep_carry does this itself):
    python experiments/sweep/sweep_data.py unpack --carry .sweep_carry --data-dir .cache/sweep/data

`pack` tokenizes the corpus with tools/preprocess_data.py's code and `--split 99,1` (each
document's split is a hash of its position, so held-out documents come from every
source), then concatenates train and valid documents into one dataset,
`<data-dir>/large_trainvalid_text_document`, train first, so that a run config selects
exactly the held-out documents with `data.split = "<train docs>,<valid docs>,0"`
(Megatron splits contiguous document ranges). The carry folder holds that dataset's
tokens and document lengths xz-compressed, the tokenizer and a manifest with counts and
SHA-256 sums.

Why tokens and not text: for the 306k-document `large` corpus with a 16k tokenizer, the
tokens (66.3M x 2 bytes) compress with `xz -9e` to 34.3 MB (+0.6 MB of lengths), the
text-only jsonl to 38.2 MB, and unpacking the tokens is a decompression (seconds), not a
tokenization; it also cannot differ across sentencepiece versions. `unpack` rebuilds the
`.bin`/`.idx` pair and refuses it unless both hashes equal the packed ones.
"""
from __future__ import annotations

import argparse
import json
import lzma
import os
import shutil
import sys
import time
from typing import Dict, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron_sffn.data.assets import file_sha256  # noqa: E402
from megatron_sffn.data.indexed_dataset import IndexedDataset, IndexedDatasetWriter  # noqa: E402

TOKENS_FILE = "tokens.bin.xz"
LENGTHS_FILE = "lengths.int32.xz"
TOKENIZER_FILE = "tokenizer.model"
MANIFEST_FILE = "manifest.json"
NAME = "large"
SPLIT = (99, 1)
XZ_PRESET = 9 | lzma.PRESET_EXTREME


def manifest_files():
    return (TOKENS_FILE, LENGTHS_FILE, TOKENIZER_FILE)


def dataset_prefix(data_dir: str) -> str:
    """The merged train+valid dataset that the sweep configs train on."""
    return os.path.join(data_dir, f"{NAME}_trainvalid_text_document")


def tokenizer_path(data_dir: str) -> str:
    return os.path.join(data_dir, f"{NAME}_tokenizer.model")


def read_manifest(directory: str) -> Optional[Dict]:
    path = os.path.join(directory, MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, data: Dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def merge_datasets(prefixes, out_prefix: str) -> None:
    """Concatenate indexed datasets document by document (same dtype), in the given order."""
    parts = [IndexedDataset(p) for p in prefixes]
    with IndexedDatasetWriter(out_prefix, dtype=parts[0].dtype) as writer:
        for part in parts:
            writer.add_documents(np.fromfile(part.prefix + ".bin", dtype=part.dtype), part.sizes)


def _xz(src: str, dst: str) -> None:
    tmp = dst + ".tmp"
    with open(src, "rb") as i, lzma.open(tmp, "wb", preset=XZ_PRESET) as o:
        shutil.copyfileobj(i, o, 16 << 20)
    os.replace(tmp, dst)


def data_manifest(data_dir: str, train_documents: int, valid_documents: int) -> Dict:
    ds = IndexedDataset(dataset_prefix(data_dir))
    sizes = ds.sizes.astype(np.int64)
    return {"prefix": dataset_prefix(data_dir), "tokenizer": tokenizer_path(data_dir),
            "dtype": ds.dtype.name, "train_documents": train_documents, "valid_documents": valid_documents,
            "train_tokens": int(sizes[:train_documents].sum()), "valid_tokens": int(sizes[train_documents:].sum()),
            "data_split": f"{train_documents},{valid_documents},0",
            "bin_sha256": file_sha256(dataset_prefix(data_dir) + ".bin"),
            "idx_sha256": file_sha256(dataset_prefix(data_dir) + ".idx"),
            "tokenizer_sha256": file_sha256(tokenizer_path(data_dir))}


# ---------------------------------------------------------------------------------------
# pack (here)
# ---------------------------------------------------------------------------------------
def pack(corpus: str, tokenizer: str, carry: str, data_dir: str, workers: int) -> Dict:
    from megatron_sffn.data.preprocess import PreprocessConfig, preprocess
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(carry, exist_ok=True)
    shutil.copyfile(tokenizer, tokenizer_path(data_dir))
    start = time.perf_counter()
    preprocess(PreprocessConfig(inputs=[corpus], json_keys=["text"], tokenizer_model=tokenizer_path(data_dir),
                                output_prefix=os.path.join(data_dir, NAME), workers=workers, append_eod=True,
                                split=SPLIT, show_progress=sys.stdout.isatty(), handle_sigterm=False))
    tokenize_s = time.perf_counter() - start
    train, valid = (IndexedDataset(os.path.join(data_dir, f"{NAME}_{s}_text_document")) for s in ("train", "valid"))
    merge_datasets([train.prefix, valid.prefix], dataset_prefix(data_dir))
    data = data_manifest(data_dir, train.num_documents, valid.num_documents)
    _write_json(os.path.join(data_dir, MANIFEST_FILE), data)
    start = time.perf_counter()
    _xz(dataset_prefix(data_dir) + ".bin", os.path.join(carry, TOKENS_FILE))
    lengths = os.path.join(data_dir, "lengths.int32")
    IndexedDataset(dataset_prefix(data_dir)).sizes.astype("<i4").tofile(lengths)
    _xz(lengths, os.path.join(carry, LENGTHS_FILE))
    os.remove(lengths)
    shutil.copyfile(tokenizer, os.path.join(carry, TOKENIZER_FILE))
    files = manifest_files()
    manifest = {"name": NAME, "split": list(SPLIT), "corpus": os.path.basename(corpus),
                "corpus_sha256": file_sha256(corpus),
                "files": {f: file_sha256(os.path.join(carry, f)) for f in files},
                "bytes": {f: os.path.getsize(os.path.join(carry, f)) for f in files},
                "dataset": {k: v for k, v in data.items() if k not in ("prefix", "tokenizer")},
                "seconds_here": {"tokenize": round(tokenize_s, 1), "compress": round(time.perf_counter() - start, 1),
                                 "workers": workers}}
    _write_json(os.path.join(carry, MANIFEST_FILE), manifest)
    return manifest


# ---------------------------------------------------------------------------------------
# unpack (GPU host)
# ---------------------------------------------------------------------------------------
def unpack(carry: str, data_dir: str, force: bool = False) -> Dict:
    """Rebuild the dataset in `data_dir` from the carry folder (skipped when already there)."""
    manifest = read_manifest(carry)
    if manifest is None:
        raise SystemExit(f"error: {carry} holds no {MANIFEST_FILE}; make it with `experiments/sweep/sweep_data.py pack`")
    expected = manifest["dataset"]
    done = read_manifest(data_dir)
    if not force and done is not None and all(done.get(k) == expected[k] for k in ("bin_sha256", "idx_sha256")) \
            and os.path.isfile(dataset_prefix(data_dir) + ".bin"):
        return done
    start = time.perf_counter()
    for name, digest in manifest["files"].items():
        if file_sha256(os.path.join(carry, name)) != digest:
            raise SystemExit(f"error: {os.path.join(carry, name)} does not match {MANIFEST_FILE} (damaged copy?)")
    os.makedirs(data_dir, exist_ok=True)
    shutil.copyfile(os.path.join(carry, TOKENIZER_FILE), tokenizer_path(data_dir))
    with lzma.open(os.path.join(carry, LENGTHS_FILE)) as f:
        lengths = np.frombuffer(f.read(), dtype="<i4").astype(np.int64)
    dtype = np.dtype(expected["dtype"])
    with lzma.open(os.path.join(carry, TOKENS_FILE)) as f, \
            IndexedDatasetWriter(dataset_prefix(data_dir), dtype=dtype) as writer:
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        step = 100_000                      # documents per write: bounded memory
        for first in range(0, len(lengths), step):
            last = min(first + step, len(lengths))
            chunk = f.read(int(bounds[last] - bounds[first]) * dtype.itemsize)
            writer.write_raw(chunk, lengths[first:last])
        if f.read(1):
            raise SystemExit(f"error: {TOKENS_FILE} holds more tokens than its document lengths add up to")
    data = data_manifest(data_dir, expected["train_documents"], expected["valid_documents"])
    for key in ("bin_sha256", "idx_sha256", "tokenizer_sha256"):
        if data[key] != expected[key]:
            raise SystemExit(f"error: the unpacked dataset differs from the packed one ({key})")
    data["unpack_seconds"] = round(time.perf_counter() - start, 1)
    _write_json(os.path.join(data_dir, MANIFEST_FILE), data)
    return data


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    pk = sub.add_parser("pack", help="corpus + tokenizer -> dataset in --data-dir and the carry folder")
    pk.add_argument("--corpus", required=True, help="jsonl(.gz/.xz) from experiments/sweep/build_corpus.py")
    pk.add_argument("--tokenizer", required=True, help="sentencepiece .model trained on it")
    pk.add_argument("--carry", default=".sweep_carry")
    pk.add_argument("--data-dir", default=os.path.join(".cache", "sweep", "data"))
    pk.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    up = sub.add_parser("unpack", help="carry folder -> dataset in --data-dir")
    up.add_argument("--carry", default=".sweep_carry")
    up.add_argument("--data-dir", default=os.path.join(".cache", "sweep", "data"))
    up.add_argument("--force", action="store_true", help="rebuild even when already unpacked")
    args = p.parse_args(argv)
    if args.command == "pack":
        result = pack(args.corpus, args.tokenizer, args.carry, args.data_dir, args.workers)
    else:
        result = unpack(args.carry, args.data_dir, force=args.force)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
