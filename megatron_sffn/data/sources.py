"""Where raw documents come from: jsonl (plain, .gz or .xz), parquet, folders of those, and
Hugging Face datasets (a local path or a hub name, streamed).

Inputs are resolved and checked up front (`resolve_inputs`, `check_sources`) so a wrong
path or a wrong `--json-keys` fails in a second with a message naming the file and the
fields it does have, not hours into a run. Records are then read in batches
(`iter_batches`): jsonl as raw lines, parsed later by the worker processes; parquet and
datasets as lists of field values.
"""
from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence

JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson", ".ndjson.gz",
                  ".jsonl.xz", ".json.xz", ".ndjson.xz")
COMPRESSED_SUFFIXES = (".gz", ".xz")
PARQUET_SUFFIXES = (".parquet",)
SAVED_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
PREFLIGHT_RECORDS = 100


class InputError(ValueError):
    """An input that cannot be read, or that lacks the requested fields; names the input."""


@dataclass
class Source:
    kind: str                 # "jsonl" | "parquet" | "hf"
    name: str                 # file path, or dataset name / path for "hf"
    size_bytes: Optional[int] = None
    hf_options: dict = field(default_factory=dict)

    @property
    def compressed(self) -> bool:
        return self.kind == "jsonl" and self.name.endswith(COMPRESSED_SUFFIXES)


@dataclass
class Batch:
    """A run of consecutive records from one source.

    `lines` holds raw jsonl lines (bytes) for the workers to parse; `records` holds, for
    parquet and datasets, one tuple of field values (None when absent) per record.
    """
    source: str
    first_record: int         # 1-based record (line) number of the first item
    source_index: int = 0     # position of the source in the resolved input list
    lines: Optional[List[bytes]] = None
    records: Optional[List[tuple]] = None
    nbytes: int = 0

    def __len__(self) -> int:
        return len(self.lines if self.lines is not None else self.records)


def _is_jsonl(path: str) -> bool:
    return path.lower().endswith(JSONL_SUFFIXES)


def _is_parquet(path: str) -> bool:
    return path.lower().endswith(PARQUET_SUFFIXES)


def _file_source(path: str) -> Source:
    if not os.access(path, os.R_OK):
        raise InputError(f"input file {path} is not readable (permissions)")
    kind = "jsonl" if _is_jsonl(path) else "parquet" if _is_parquet(path) else None
    if kind is None:
        raise InputError(f"input file {path} has an unsupported type; expected one of "
                         f"{', '.join(JSONL_SUFFIXES + PARQUET_SUFFIXES)}")
    return Source(kind, path, os.path.getsize(path))


def resolve_inputs(inputs: Sequence[str], hf_split: str = "train", hf_config: Optional[str] = None,
                   streaming: Optional[bool] = None) -> List[Source]:
    """Expand files, folders, globs and dataset names into an ordered list of sources."""
    if not inputs:
        raise InputError("no --input given")
    sources: List[Source] = []
    for item in inputs:
        if os.path.isdir(item):
            if any(os.path.exists(os.path.join(item, m)) for m in SAVED_DATASET_MARKERS):
                sources.append(Source("hf", item, None, _hf_options(hf_split, hf_config, False)))
                continue
            everything = [p for p in glob.glob(os.path.join(item, "**", "*"), recursive=True)
                          if os.path.isfile(p)]
            files = sorted(p for p in everything if _is_jsonl(p) or _is_parquet(p))
            if files:
                sources.extend(_file_source(p) for p in files)
            elif everything:   # csv, arrow, text ...: let `datasets` read (stream) the folder
                stream = True if streaming is None else streaming
                sources.append(Source("hf", item, None, _hf_options(hf_split, hf_config, stream)))
            else:
                raise InputError(f"input folder {item} holds no jsonl, jsonl.gz or parquet files")
        elif os.path.isfile(item):
            sources.append(_file_source(item))
        elif any(ch in item for ch in "*?["):
            files = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not files:
                raise InputError(f"input pattern {item} matches no files")
            sources.extend(_file_source(p) for p in files)
        elif item.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES) or item.startswith((".", "/")):
            raise InputError(f"input file {item} not found")
        else:  # a dataset name for `datasets` (hub name or loading-script path)
            stream = True if streaming is None else streaming
            sources.append(Source("hf", item, None, _hf_options(hf_split, hf_config, stream)))
    return sources


def _hf_options(split: str, config: Optional[str], streaming: bool) -> dict:
    return {"split": split, "config": config, "streaming": streaming}


# ---------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------
def _open_jsonl(path: str):
    raw = open(path, "rb")
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if path.endswith(".xz"):
        return lzma.LZMAFile(raw, mode="rb")
    return raw


def _load_hf(source: Source):
    try:
        import datasets
    except ImportError as error:  # pragma: no cover - datasets is a dependency
        raise InputError("reading a dataset by name needs the `datasets` package") from error
    opts = source.hf_options
    try:
        if os.path.isdir(source.name) and any(
                os.path.exists(os.path.join(source.name, m)) for m in SAVED_DATASET_MARKERS):
            loaded = datasets.load_from_disk(source.name)
            if isinstance(loaded, datasets.DatasetDict):
                if opts["split"] not in loaded:
                    raise InputError(f"dataset {source.name} has no split {opts['split']!r} "
                                     f"(splits: {', '.join(loaded)})")
                loaded = loaded[opts["split"]]
            return loaded
        return datasets.load_dataset(source.name, opts["config"], split=opts["split"],
                                     streaming=opts["streaming"])
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"could not open dataset {source.name!r} through `datasets` "
                         f"(split {opts['split']!r}): {type(error).__name__}: {error}") from error


def _parquet_file(path: str):
    try:
        import pyarrow.parquet as pq
    except ImportError as error:  # pragma: no cover - pyarrow comes with datasets
        raise InputError(f"reading {path} needs pyarrow (pip install pyarrow)") from error
    try:
        return pq.ParquetFile(path)
    except Exception as error:
        raise InputError(f"input file {path} is not a readable parquet file: {error}") from error


# ---------------------------------------------------------------------------------------
# Pre-flight checks
# ---------------------------------------------------------------------------------------
def check_sources(sources: Sequence[Source], keys: Sequence[str]) -> None:
    """Open every source and look at its first records; raise InputError naming the source
    if it cannot be read or if none of its first records has the requested fields."""
    for source in sources:
        if source.kind == "jsonl":
            _check_jsonl(source.name, keys)
        elif source.kind == "parquet":
            names = _parquet_file(source.name).schema_arrow.names
            missing = [k for k in keys if k not in names]
            if missing:
                raise InputError(_missing_message(source.name, missing, names))
        else:
            dataset = _load_hf(source)
            names = list(getattr(dataset, "column_names", None) or [])
            if not names:
                try:
                    names = list(next(iter(dataset)).keys())
                except StopIteration:
                    raise InputError(f"dataset {source.name!r} is empty") from None
            missing = [k for k in keys if k not in names]
            if missing:
                raise InputError(_missing_message(f"dataset {source.name!r}", missing, names))


def _missing_message(where: str, missing, available) -> str:
    hint = " (RefinedWeb keeps its text in 'content': use --json-keys content)" \
        if "content" in available and "text" in missing else ""
    return (f"{where}: field {', '.join(repr(m) for m in missing)} not found; "
            f"its records have {', '.join(repr(a) for a in available) or 'no fields'}{hint}")


def _check_jsonl(path: str, keys: Sequence[str]) -> None:
    seen_fields: List[str] = []
    parsed = 0
    try:
        with _open_jsonl(path) as stream:
            for line in stream:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except (UnicodeDecodeError, ValueError):
                    continue
                if not isinstance(record, dict):
                    continue
                parsed += 1
                if all(k in record for k in keys):
                    return
                seen_fields.extend(k for k in record if k not in seen_fields)
                if parsed >= PREFLIGHT_RECORDS:
                    break
    except (OSError, EOFError, gzip.BadGzipFile, lzma.LZMAError) as error:
        raise InputError(f"input file {path} cannot be read: {error}") from error
    if parsed == 0:
        # An empty file is not an error: it contributes no documents.
        if os.path.getsize(path) == 0 or _only_blank(path):
            return
        raise InputError(f"input file {path}: none of its first lines is a JSON object")
    missing = [k for k in keys if k not in seen_fields]
    raise InputError(_missing_message(f"input file {path}", missing or list(keys), seen_fields))


def _only_blank(path: str) -> bool:
    with _open_jsonl(path) as stream:
        return all(not line.strip() for line in stream)


# ---------------------------------------------------------------------------------------
# Batched reading
# ---------------------------------------------------------------------------------------
def iter_batches(source: Source, keys: Sequence[str], batch_bytes: int = 1 << 20,
                 max_records: int = 4096, source_index: int = 0) -> Iterator[Batch]:
    """Consecutive batches of about `batch_bytes` of text (or `max_records` records)."""
    if source.kind == "jsonl":
        batches = _jsonl_batches(source.name, batch_bytes, max_records)
    elif source.kind == "parquet":
        batches = _parquet_batches(source.name, keys, batch_bytes, max_records)
    else:
        batches = _hf_batches(source, keys, batch_bytes, max_records)
    for batch in batches:
        batch.source_index = source_index
        yield batch


def _jsonl_batches(path: str, batch_bytes: int, max_records: int) -> Iterator[Batch]:
    try:
        with _open_jsonl(path) as stream:
            reader = io.BufferedReader(stream, 4 << 20) if path.endswith(COMPRESSED_SUFFIXES) else stream
            lines: List[bytes] = []
            size, line_no, first = 0, 0, 1
            for line in reader:
                line_no += 1
                lines.append(line)
                size += len(line)
                if size >= batch_bytes or len(lines) >= max_records:
                    yield Batch(path, first, lines=lines, nbytes=size)
                    lines, size, first = [], 0, line_no + 1
            if lines:
                yield Batch(path, first, lines=lines, nbytes=size)
    except (OSError, EOFError, gzip.BadGzipFile, lzma.LZMAError) as error:
        raise InputError(f"input file {path} cannot be read: {error}") from error


def _parquet_batches(path: str, keys, batch_bytes: int, max_records: int) -> Iterator[Batch]:
    parquet = _parquet_file(path)
    record_no = 1
    try:
        for table in parquet.iter_batches(batch_size=max_records, columns=list(keys)):
            columns = [table.column(k).to_pylist() for k in keys]
            records = list(zip(*columns))
            nbytes = sum(len(v) for col in columns for v in col if isinstance(v, str))
            yield Batch(path, record_no, records=records, nbytes=nbytes)
            record_no += len(records)
    except InputError:
        raise
    except Exception as error:
        raise InputError(f"input file {path} cannot be read: {error}") from error


def _hf_batches(source: Source, keys, batch_bytes: int, max_records: int) -> Iterator[Batch]:
    dataset = _load_hf(source)
    records: List[tuple] = []
    size, record_no, first = 0, 0, 1
    for example in dataset:
        record_no += 1
        values = tuple(example.get(k) for k in keys)
        records.append(values)
        size += sum(len(v) for v in values if isinstance(v, str))
        if size >= batch_bytes or len(records) >= max_records:
            yield Batch(source.name, first, records=records, nbytes=size)
            records, size, first = [], 0, record_no + 1
    if records:
        yield Batch(source.name, first, records=records, nbytes=size)


# ---------------------------------------------------------------------------------------
# In-process text iteration (tokenizer training, inspection)
# ---------------------------------------------------------------------------------------
def iter_texts(sources: Sequence[Source], keys: Sequence[str], stats: Optional[dict] = None
               ) -> Iterator[str]:
    """Every usable text field of every record, skipping (and counting) bad records."""
    from .records import extract_fields
    stats = stats if stats is not None else {}
    for source in sources:
        for batch in iter_batches(source, keys):
            items = batch.lines if batch.lines is not None else batch.records
            for item in items:
                values, problem = extract_fields(item, keys, batch.lines is not None)
                if problem is not None:
                    stats[problem] = stats.get(problem, 0) + 1
                    continue
                for value in values:
                    if value.strip():
                        yield value
