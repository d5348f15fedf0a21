"""The bundled corpus and tokenizer, so the demo run and the tests work offline.

megatron_sffn/assets/ holds corpus.jsonl.gz (public-domain English prose taken from Debian
packages; see LICENSE-corpus.txt and experiments/sweep/build_corpus.py --preset embedded) and
tokenizer.model (an 8000-piece sentencepiece BPE model trained on it).
`default_data_prefix()` tokenizes the corpus into an indexed dataset the first time it is
asked for, in a user cache folder, and reuses it afterwards.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Optional

from .indexed_dataset import IndexedDataset, IndexedDatasetError, dataset_exists

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
CORPUS_FILE = "corpus.jsonl.gz"
TOKENIZER_FILE = "tokenizer.model"
DATASET_NAME = "corpus_text_document"
BUILD_FORMAT = 1


def default_corpus_path() -> str:
    return _asset(CORPUS_FILE)


def default_tokenizer_path() -> str:
    return _asset(TOKENIZER_FILE)


def _asset(name: str) -> str:
    path = os.path.join(ASSETS_DIR, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bundled asset {path} is missing (incomplete installation?)")
    return path


def default_cache_dir() -> str:
    """$MEGATRON_SFFN_CACHE, else $XDG_CACHE_HOME/megatron_sffn, else ~/.cache/megatron_sffn."""
    if os.environ.get("MEGATRON_SFFN_CACHE"):
        return os.environ["MEGATRON_SFFN_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "megatron_sffn")


def file_sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def default_data_prefix(cache_dir: Optional[str] = None, show_progress: bool = False) -> str:
    """Prefix of the indexed dataset of the bundled corpus (built once, then reused).

    Safe when many ranks call it at once: each builds into its own temporary folder and
    renames it into place; the first rename wins and the others discard their copy.
    """
    from .preprocess import PreprocessConfig, preprocess
    corpus, tokenizer = default_corpus_path(), default_tokenizer_path()
    key = hashlib.sha256(f"{BUILD_FORMAT}:{file_sha256(corpus)}:{file_sha256(tokenizer)}".encode()).hexdigest()[:16]
    root = cache_dir or default_cache_dir()
    final_dir = os.path.join(root, f"embedded-{key}")
    prefix = os.path.join(final_dir, DATASET_NAME)
    if _usable(prefix):
        return prefix
    try:
        os.makedirs(root, exist_ok=True)
        work_dir = tempfile.mkdtemp(prefix=f"embedded-{key}.tmp-", dir=root)
    except OSError as error:
        raise OSError(f"cannot write the bundled dataset to {root}: {error} (set "
                      "MEGATRON_SFFN_CACHE or data.cache_dir to a writable folder)") from error
    os.chmod(work_dir, 0o755)
    try:
        preprocess(PreprocessConfig(inputs=[corpus], json_keys=["text"], tokenizer_model=tokenizer,
                                    output_prefix=os.path.join(work_dir, "corpus"), workers=0,
                                    append_eod=True, show_progress=show_progress,
                                    handle_sigterm=False))
        try:
            os.rename(work_dir, final_dir)
        except OSError:
            if not _usable(prefix):      # lost the race to a complete copy: keep that one
                raise
    finally:
        if os.path.isdir(work_dir):
            shutil.rmtree(work_dir, ignore_errors=True)
    return prefix


def _usable(prefix: str) -> bool:
    if not dataset_exists(prefix):
        return False
    try:
        IndexedDataset(prefix)
        return True
    except IndexedDatasetError:
        return False
