"""Raw text -> Megatron indexed datasets, tokenized by a pool of worker processes.

The main process reads batches of raw records (jsonl lines are not even parsed there) and
keeps at most a few batches per worker in flight; each worker parses, validates and
tokenizes a whole batch with one sentencepiece call and sends back the tokens already
packed in the output dtype. Results are written in input order, so the output does not
depend on the number of workers. Bad records are skipped and counted (or, with
`strict=True`, stop the run); whatever stops a run, the temporary files are removed and
any dataset already at the output prefix is left as it was.
"""
from __future__ import annotations

import collections
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import records as rec
from .indexed_dataset import (IndexedDatasetWriter, data_file_path, index_file_path,
                              token_dtype_for_vocab)
from .sources import Batch, InputError, Source, check_sources, iter_batches, resolve_inputs
from .tokenizer import SentencePieceTokenizer

SPLIT_NAMES = ("train", "valid", "test")
MAX_EXAMPLES = 5          # bad-record messages kept per reason


class PreprocessError(RuntimeError):
    """A run stopped on bad input (strict mode) or produced no documents."""


@dataclass
class PreprocessConfig:
    inputs: Sequence[str]
    json_keys: Sequence[str]
    tokenizer_model: str
    output_prefix: str
    workers: int = 1
    append_eod: bool = False
    split: Optional[Sequence[float]] = None     # e.g. (99, 1) -> train / valid outputs
    split_seed: int = 1234
    strict: bool = False
    batch_bytes: int = 1 << 20
    hf_split: str = "train"
    hf_config: Optional[str] = None
    streaming: Optional[bool] = None
    max_documents: Optional[int] = None         # stop after this many input records
    show_progress: bool = True
    handle_sigterm: bool = True                 # turn SIGTERM into a clean abort (CLI runs)


@dataclass
class PreprocessSummary:
    documents: int = 0
    tokens: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    seconds: float = 0.0
    records: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    examples: Dict[str, List[str]] = field(default_factory=dict)
    outputs: Dict[str, str] = field(default_factory=dict)       # "<split>/<key>" -> prefix
    documents_per_output: Dict[str, int] = field(default_factory=dict)

    @property
    def documents_per_second(self) -> float:
        return self.documents / max(self.seconds, 1e-9)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)

    def report(self) -> str:
        lines = [f"documents  {self.documents:,} written of {self.records:,} records read",
                 f"tokens     {self.tokens:,}",
                 f"bytes      {self.input_bytes:,} read, {self.output_bytes:,} written",
                 f"time       {self.seconds:.1f} s ({self.documents_per_second:,.0f} docs/s, "
                 f"{self.tokens_per_second:,.0f} tokens/s)"]
        for reason, count in sorted(self.skipped.items(), key=lambda kv: -kv[1]):
            lines.append(f"skipped    {count:,} records: {reason} "
                         f"(e.g. {'; '.join(self.examples.get(reason, [])[:2])})")
        for name, prefix in self.outputs.items():
            lines.append(f"output     {prefix}.bin/.idx ({self.documents_per_output[name]:,} documents)")
        return "\n".join(lines)


def output_prefixes(output_prefix: str, keys: Sequence[str], split: Optional[Sequence[float]]
                    ) -> Dict[str, str]:
    """Megatron names: `<prefix>_<key>_document`, or `<prefix>_<split>_<key>_document`."""
    names = {}
    splits = [s for s, w in zip(SPLIT_NAMES, split) if w > 0] if split else [None]
    for s in splits:
        for key in keys:
            middle = f"{s}_{key}" if s else key
            names[f"{s or 'all'}/{key}"] = f"{output_prefix}_{middle}_document"
    return names


# ---------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(model_path: str, keys: Sequence[str], append_eod: bool, dtype: str,
                 split_bounds: Optional[Tuple[float, ...]], split_seed: int, strict: bool,
                 in_pool: bool = True) -> None:
    if in_pool:
        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the main process handles interrupts
    tokenizer = SentencePieceTokenizer(model_path)
    _WORKER.update(tokenizer=tokenizer, keys=tuple(keys), eod=tokenizer.eos_id if append_eod else None,
                   dtype=np.dtype(dtype), split_bounds=split_bounds, split_seed=split_seed,
                   strict=strict)


def split_assignment(source_index: int, record_numbers: np.ndarray, bounds: Sequence[float],
                     seed: int) -> np.ndarray:
    """Which split (0 train, 1 valid, 2 test) each record goes to: a hash of its position in
    the input, so the assignment does not depend on batching or on the number of workers."""
    x = (np.uint64(source_index) << np.uint64(40)) | record_numbers.astype(np.uint64)
    x = x + np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    unit = (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return np.searchsorted(np.asarray(bounds[:-1]), unit, side="right")


def _encode_batch(batch: Batch) -> dict:
    w = _WORKER
    keys, is_line = w["keys"], batch.lines is not None
    items = batch.lines if is_line else batch.records
    good_values: List[tuple] = []
    good_numbers: List[int] = []
    skipped: Dict[str, int] = {}
    examples: Dict[str, List[str]] = {}
    for offset, item in enumerate(items):
        values, problem = rec.extract_fields(item, keys, is_line)
        if problem is None:
            good_values.append(values)
            good_numbers.append(batch.first_record + offset)
            continue
        if problem == rec.BLANK:
            continue
        where = f"{batch.source}:{batch.first_record + offset}"
        if w["strict"]:
            return {"error": f"{where}: {problem}"}
        skipped[problem] = skipped.get(problem, 0) + 1
        if len(examples.setdefault(problem, [])) < MAX_EXAMPLES:
            examples[problem].append(where)

    n = len(good_values)
    if w["split_bounds"] is not None and n:
        assignment = split_assignment(batch.source_index, np.asarray(good_numbers, dtype=np.int64),
                                      w["split_bounds"], w["split_seed"])
    else:
        assignment = np.zeros(n, dtype=np.int64)

    outputs = {}
    tokens_total = 0
    for k, key in enumerate(keys):
        texts = [v[k] for v in good_values]
        ids = w["tokenizer"].encode_batch(texts) if texts else []
        if w["eod"] is not None:
            for doc in ids:
                doc.append(w["eod"])
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=n)
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64,
                           count=int(lengths.sum()))
        tokens_total += flat.size
        if w["split_bounds"] is None:
            outputs[(0, key)] = (flat.astype(w["dtype"]).tobytes(), lengths)
        else:
            ends = np.cumsum(lengths)
            starts = ends - lengths
            for s in np.unique(assignment):
                docs = np.flatnonzero(assignment == s)
                parts = [flat[starts[d]:ends[d]] for d in docs]
                outputs[(int(s), key)] = (np.concatenate(parts).astype(w["dtype"]).tobytes(),
                                          lengths[docs])
    return {"outputs": outputs, "documents": n, "tokens": tokens_total, "records": len(items),
            "nbytes": batch.nbytes, "skipped": skipped, "examples": examples}


# ---------------------------------------------------------------------------------------
# Main side
# ---------------------------------------------------------------------------------------
def _all_batches(sources: Sequence[Source], keys, batch_bytes: int, max_documents: Optional[int]
                 ) -> Iterator[Batch]:
    remaining = max_documents
    for index, source in enumerate(sources):
        for batch in iter_batches(source, keys, batch_bytes, source_index=index):
            if remaining is not None:
                if remaining <= 0:
                    return
                if len(batch) > remaining:
                    if batch.lines is not None:
                        batch.lines = batch.lines[:remaining]
                    else:
                        batch.records = batch.records[:remaining]
                remaining -= len(batch)
            yield batch


def _ordered_results(pool, batches: Iterator[Batch], in_flight: int) -> Iterator[dict]:
    """Like pool.imap, but never reads more than `in_flight` batches ahead of the writer."""
    pending: collections.deque = collections.deque()
    for batch in batches:
        pending.append(pool.apply_async(_encode_batch, (batch,)))
        while len(pending) >= in_flight:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _check_output_location(prefix: str) -> None:
    directory = os.path.dirname(os.path.abspath(prefix)) or "."
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise InputError(f"output folder {directory} cannot be created: {error}") from error
    if not os.access(directory, os.W_OK):
        raise InputError(f"output folder {directory} is not writable")


def _progress(total_bytes: Optional[int], enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                desc="preprocess", disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Run the whole preprocessing job; returns the summary (also printed by the CLI)."""
    keys = list(config.json_keys)
    if not keys:
        raise InputError("--json-keys needs at least one field name")
    for flag, value, least in (("--workers", config.workers, 0), ("--batch-bytes", config.batch_bytes, 1),
                               ("--max-documents", config.max_documents, 1)):
        if value is not None and value < least:
            raise InputError(f"{flag} must be >= {least}, got {value}")
    if config.split is not None:
        weights = [float(x) for x in config.split]
        if len(weights) > 3 or any(x < 0 for x in weights) or sum(weights) <= 0:
            raise InputError(f"--split {config.split}: give up to three non-negative weights "
                             "for train, valid, test, e.g. 99,1")
        weights += [0.0] * (3 - len(weights))
        split_bounds = tuple(np.cumsum(weights) / sum(weights))
    else:
        weights, split_bounds = None, None
    tokenizer = SentencePieceTokenizer(config.tokenizer_model)       # fails fast if unusable
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    sources = resolve_inputs(config.inputs, config.hf_split, config.hf_config, config.streaming)
    check_sources(sources, keys)
    _check_output_location(config.output_prefix)
    names = output_prefixes(config.output_prefix, keys, weights)
    split_of = {name: (SPLIT_NAMES.index(name.split("/")[0]) if weights else 0) for name in names}

    summary = PreprocessSummary(outputs=dict(names))
    writers = {name: IndexedDatasetWriter(prefix, dtype) for name, prefix in names.items()}
    writer_for = {(split_of[name], name.split("/", 1)[1]): w for name, w in writers.items()}
    total_bytes = sum(s.size_bytes for s in sources) if all(
        s.size_bytes is not None and not s.compressed for s in sources) else None
    init_args = (config.tokenizer_model, keys, config.append_eod, dtype.str, split_bounds,
                 config.split_seed, config.strict)
    start = time.perf_counter()
    pool = None
    previous_sigterm = _raise_on_sigterm() if config.handle_sigterm else None
    try:
        batches = _all_batches(sources, keys, config.batch_bytes, config.max_documents)
        if config.workers <= 0:
            _init_worker(*init_args, in_pool=False)
            results = map(_encode_batch, batches)
        else:
            pool = _start_pool(config.workers, init_args)
            results = _ordered_results(pool, batches, in_flight=2 * config.workers + 2)
        with _progress(total_bytes, config.show_progress) as bar:
            for result in results:
                if "error" in result:
                    raise PreprocessError(f"bad record at {result['error']} (run without --strict "
                                          "to skip and count bad records instead)")
                for (split, key), (payload, lengths) in result["outputs"].items():
                    writer_for[(split, key)].write_raw(payload, lengths)
                summary.documents += result["documents"]
                summary.tokens += result["tokens"]
                summary.records += result["records"]
                summary.input_bytes += result["nbytes"]
                for reason, count in result["skipped"].items():
                    summary.skipped[reason] = summary.skipped.get(reason, 0) + count
                    kept = summary.examples.setdefault(reason, [])
                    kept.extend(result["examples"][reason][:MAX_EXAMPLES - len(kept)])
                bar.update(result["nbytes"])
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix_str(f"{summary.documents / elapsed:,.0f} docs/s, "
                                    f"{summary.tokens / elapsed:,.0f} tok/s", refresh=False)
        if summary.documents == 0:
            reasons = ", ".join(f"{c} {r}" for r, c in summary.skipped.items()) or "no records"
            raise PreprocessError(f"no documents to write: all {summary.records} records were "
                                  f"skipped ({reasons})")
        for name, writer in writers.items():
            summary.documents_per_output[name] = writer.num_documents
            writer.finalize()
    except BaseException:
        if pool is not None:
            pool.terminate()
            pool = None
        for writer in writers.values():
            writer.abort()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if config.handle_sigterm:
            _restore_sigterm(previous_sigterm)
    summary.seconds = time.perf_counter() - start
    summary.output_bytes = sum(os.path.getsize(data_file_path(p)) + os.path.getsize(index_file_path(p))
                               for p in names.values())
    return summary


def _start_pool(workers: int, init_args) -> multiprocessing.pool.Pool:
    """Fork the workers while SIGTERM has its default action.

    A worker forked under _raise_on_sigterm's Python-level handler keeps it until its
    initializer runs; a Pool.terminate() arriving in that window is then raised as
    KeyboardInterrupt or swallowed, the worker lives on blocked on the task queue, and
    terminate()'s join hangs forever (seen when an input error stops a run right away)."""
    try:
        previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: handlers are the main thread's business
        previous = None
    try:
        return multiprocessing.Pool(workers, initializer=_init_worker, initargs=init_args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_on_sigterm():
    """Turn SIGTERM into an exception so the clean-up above runs (main thread only)."""
    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return signal.getsignal(signal.SIGTERM)


def _restore_sigterm(previous) -> None:
    try:
        signal.signal(signal.SIGTERM, previous)
    except (ValueError, TypeError):
        pass
