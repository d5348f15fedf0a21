"""Megatron-LM's memory-mapped indexed dataset format: a `.bin` of tokens and an `.idx` index.

The layout (byte-compatible with Megatron-LM's MMapIndexedDataset / IndexedDataset):

    .idx: magic b"MMIDIDX\\x00\\x00" | u64 version = 1 | u8 dtype code
          | u64 n_sequences | u64 n_document_indices
          | int32[n_sequences]  sequence lengths (tokens)
          | int64[n_sequences]  byte offset of each sequence in .bin
          | int64[n_document_indices] document boundaries: [0, ..., n_sequences]
          (| int8[n_sequences] modes, multimodal datasets only)
    .bin: the sequences' tokens, back to back, in the dtype of the index.

GPT data has one sequence per document, so document i is sequence i. The reader checks
every size it can afford to before training touches the data, and names the file at fault;
the writer writes to temporary names and publishes the `.idx` last, so an interrupted run
never leaves a pair that opens.
"""
from __future__ import annotations

import os
import struct
from array import array
from typing import Iterable, Optional, Union

import numpy as np

INDEX_MAGIC = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = len(INDEX_MAGIC) + 8 + 1 + 8 + 8  # = 34

# Megatron-LM's DType codes.
DTYPE_BY_CODE = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64,
                 6: np.float64, 7: np.float32, 8: np.uint16}
CODE_BY_DTYPE = {np.dtype(t): c for c, t in DTYPE_BY_CODE.items()}


class IndexedDatasetError(ValueError):
    """A missing, truncated or corrupt .bin/.idx pair; the message names the file."""


def index_file_path(prefix: str) -> str:
    return prefix + ".idx"


def data_file_path(prefix: str) -> str:
    return prefix + ".bin"


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The smallest token dtype for a vocabulary, chosen exactly as Megatron-LM chooses it."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def dataset_exists(prefix: str) -> bool:
    return os.path.isfile(index_file_path(prefix)) and os.path.isfile(data_file_path(prefix))


class IndexedDataset:
    """Read-only view of a .bin/.idx pair through memory maps (no tokens are loaded eagerly).

    `verify=True` also checks every offset and length (O(documents)); the default checks the
    header, the dtype and that both files have exactly the sizes the header implies.
    """

    def __init__(self, prefix: str, verify: bool = False):
        self.prefix = prefix
        self._open(verify)

    # -- opening and validation ---------------------------------------------------------
    def _open(self, verify: bool) -> None:
        idx_path, bin_path = index_file_path(self.prefix), data_file_path(self.prefix)
        for path in (idx_path, bin_path):
            if not os.path.isfile(path):
                raise IndexedDatasetError(f"indexed dataset file {path} not found")
        idx_size = os.path.getsize(idx_path)
        if idx_size < HEADER_BYTES:
            raise IndexedDatasetError(f"{idx_path} is truncated: {idx_size} bytes, shorter than "
                                      f"the {HEADER_BYTES}-byte header")
        with open(idx_path, "rb") as stream:
            header = stream.read(HEADER_BYTES)
        magic = header[:len(INDEX_MAGIC)]
        if magic != INDEX_MAGIC:
            raise IndexedDatasetError(f"{idx_path} is not a Megatron indexed-dataset index "
                                      f"(magic {magic!r}, expected {INDEX_MAGIC!r})")
        version, code, n_seq, n_doc_idx = struct.unpack("<QBQQ", header[len(INDEX_MAGIC):])
        if version != INDEX_VERSION:
            raise IndexedDatasetError(f"{idx_path} has index version {version}; only version "
                                      f"{INDEX_VERSION} is known")
        if code not in DTYPE_BY_CODE:
            raise IndexedDatasetError(f"{idx_path} names token dtype code {code}, which is not "
                                      f"one of {sorted(DTYPE_BY_CODE)}")
        self.dtype = np.dtype(DTYPE_BY_CODE[code])
        expected = HEADER_BYTES + n_seq * 4 + n_seq * 8 + n_doc_idx * 8
        if idx_size < expected:
            raise IndexedDatasetError(
                f"{idx_path} is truncated: {idx_size} bytes, but its header announces {n_seq} "
                f"sequences and {n_doc_idx} document indices ({expected} bytes)")
        if idx_size not in (expected, expected + n_seq):  # + n_seq: multimodal mode bytes
            raise IndexedDatasetError(
                f"{idx_path} is corrupt: {idx_size} bytes, expected {expected} for {n_seq} "
                f"sequences and {n_doc_idx} document indices")

        self._idx_map = np.memmap(idx_path, dtype=np.uint8, mode="r")
        offset = HEADER_BYTES
        self.sizes = np.frombuffer(self._idx_map, dtype=np.int32, count=n_seq, offset=offset)
        offset += n_seq * 4
        self.pointers = np.frombuffer(self._idx_map, dtype=np.int64, count=n_seq, offset=offset)
        offset += n_seq * 8
        self.document_indices = np.frombuffer(self._idx_map, dtype=np.int64, count=n_doc_idx,
                                              offset=offset)
        if n_doc_idx == 0 or self.document_indices[0] != 0 or self.document_indices[-1] != n_seq:
            raise IndexedDatasetError(
                f"{idx_path} is corrupt: its document indices must run from 0 to the number of "
                f"sequences ({n_seq})")

        itemsize = self.dtype.itemsize
        data_bytes = int(self.pointers[-1]) + int(self.sizes[-1]) * itemsize if n_seq else 0
        bin_size = os.path.getsize(bin_path)
        if bin_size < data_bytes:
            raise IndexedDatasetError(
                f"{bin_path} is truncated: {bin_size} bytes, but {idx_path} indexes {data_bytes} "
                "bytes of tokens")
        if bin_size > data_bytes:
            raise IndexedDatasetError(
                f"{bin_path} does not match {idx_path}: {bin_size} bytes, but the index covers "
                f"{data_bytes} bytes (a .bin from another run?)")
        if verify:
            self._verify_offsets(idx_path)
        if bin_size:
            self._bin_map = np.memmap(bin_path, dtype=self.dtype, mode="r")
        else:
            self._bin_map = np.empty(0, dtype=self.dtype)

    def _verify_offsets(self, idx_path: str) -> None:
        if len(self.sizes) and int(self.sizes.min()) < 0:
            raise IndexedDatasetError(f"{idx_path} is corrupt: negative sequence length")
        expected = np.zeros(len(self.sizes), dtype=np.int64)
        np.cumsum(self.sizes[:-1], dtype=np.int64, out=expected[1:])
        expected *= self.dtype.itemsize
        if not np.array_equal(expected, self.pointers):
            bad = int(np.flatnonzero(expected != self.pointers)[0])
            raise IndexedDatasetError(f"{idx_path} is corrupt: the offset of sequence {bad} is "
                                      f"{int(self.pointers[bad])}, expected {int(expected[bad])}")
        if np.any(np.diff(self.document_indices) < 0):
            raise IndexedDatasetError(f"{idx_path} is corrupt: document indices decrease")

    # -- access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sizes)

    @property
    def num_documents(self) -> int:
        return len(self.document_indices) - 1

    @property
    def num_tokens(self) -> int:
        return int(self.sizes.sum(dtype=np.int64))

    def __getitem__(self, index: Union[int, np.integer, slice]):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("slices of an indexed dataset must be contiguous")
            if start >= stop:
                return []
            first = int(self.pointers[start]) // self.dtype.itemsize
            lengths = self.sizes[start:stop]
            flat = self._bin_map[first:first + int(lengths.sum(dtype=np.int64))]
            return np.split(flat, np.cumsum(lengths[:-1], dtype=np.int64))
        return self.get(index)

    def get(self, index: int, offset: int = 0, length: Optional[int] = None) -> np.ndarray:
        """Tokens [offset, offset + length) of sequence `index` (a view into the memory map)."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sequence {index} out of range for {self.prefix} ({len(self)} sequences)")
        size = int(self.sizes[index])
        if length is None:
            length = size - offset
        start = int(self.pointers[index]) // self.dtype.itemsize + int(offset)
        return self._bin_map[start:start + int(length)]

    def __getstate__(self):
        return {"prefix": self.prefix}

    def __setstate__(self, state):
        self.prefix = state["prefix"]
        self._open(verify=False)

    def __repr__(self) -> str:
        return (f"IndexedDataset({self.prefix!r}, documents={self.num_documents}, "
                f"sequences={len(self)}, dtype={self.dtype.name})")


class IndexedDatasetWriter:
    """Appends documents to `<prefix>.bin` and writes `<prefix>.idx` on `finalize()`.

    Everything goes to temporary names first; `finalize()` removes any old index, then moves
    the `.bin` and finally the `.idx` into place, so the pair on disk is either the previous
    complete one, a lone `.bin` (which does not open), or the new complete one. Used as a
    context manager, an exception discards the temporary files and leaves existing data alone.
    """

    def __init__(self, prefix: str, dtype=np.uint16):
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_BY_DTYPE:
            raise ValueError(f"token dtype {self.dtype} has no Megatron dtype code")
        directory = os.path.dirname(os.path.abspath(prefix))
        os.makedirs(directory, exist_ok=True)
        tag = f".tmp-{os.getpid()}"
        self._bin_tmp = data_file_path(prefix) + tag
        self._idx_tmp = index_file_path(prefix) + tag
        self._bin = open(self._bin_tmp, "wb", buffering=8 << 20)
        self._lengths = array("q")
        self._limit = np.iinfo(self.dtype).max if self.dtype.kind in "iu" else None
        self.num_tokens = 0
        self._done = False

    def add_document(self, tokens: Iterable[int]) -> None:
        """Append one document (one sequence) of token ids."""
        arr = np.asarray(tokens)
        self.add_documents(arr, [arr.size])

    def add_documents(self, flat_tokens: np.ndarray, lengths) -> None:
        """Append several documents given as their concatenated tokens and their lengths."""
        flat = np.asarray(flat_tokens)
        lengths = np.asarray(lengths, dtype=np.int64)
        if int(lengths.sum()) != flat.size:
            raise ValueError(f"document lengths sum to {int(lengths.sum())}, but {flat.size} "
                             "tokens were given")
        if flat.size and self._limit is not None and flat.dtype != self.dtype:
            if int(flat.max()) > self._limit or int(flat.min()) < 0:
                raise ValueError(f"token id out of range for dtype {self.dtype.name} "
                                 f"(max {int(flat.max())}); use a wider dtype")
        self._bin.write(np.ascontiguousarray(flat, dtype=self.dtype).tobytes())
        self._lengths.extend(lengths.tolist())
        self.num_tokens += flat.size

    def write_raw(self, token_bytes: bytes, lengths: np.ndarray) -> None:
        """Append documents already encoded in this writer's dtype (the preprocessing hot path)."""
        self._bin.write(token_bytes)
        self._lengths.frombytes(np.asarray(lengths, dtype=np.int64).tobytes())
        self.num_tokens += len(token_bytes) // self.dtype.itemsize

    @property
    def num_documents(self) -> int:
        return len(self._lengths)

    def finalize(self) -> None:
        if self._done:
            return
        self._bin.flush()
        os.fsync(self._bin.fileno())
        self._bin.close()
        lengths = np.frombuffer(self._lengths, dtype=np.int64)
        if len(lengths) and int(lengths.max()) > np.iinfo(np.int32).max:
            self.abort()
            raise ValueError("a document longer than 2**31 tokens cannot be indexed")
        pointers = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=pointers[1:])
        pointers *= self.dtype.itemsize
        with open(self._idx_tmp, "wb") as out:
            out.write(INDEX_MAGIC)
            out.write(struct.pack("<QBQQ", INDEX_VERSION, CODE_BY_DTYPE[self.dtype],
                                  len(lengths), len(lengths) + 1))
            out.write(lengths.astype(np.int32).tobytes())
            out.write(pointers.tobytes())
            out.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
            out.flush()
            os.fsync(out.fileno())
        idx_path = index_file_path(self.prefix)
        if os.path.exists(idx_path):
            os.remove(idx_path)
        os.replace(self._bin_tmp, data_file_path(self.prefix))
        os.replace(self._idx_tmp, idx_path)
        self._done = True

    def abort(self) -> None:
        """Discard everything written; existing files at the prefix are left untouched."""
        if self._done:
            return
        self._bin.close()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.remove(path)
        self._done = True

    def __enter__(self) -> "IndexedDatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
