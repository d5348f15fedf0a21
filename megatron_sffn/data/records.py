"""Turning one raw record into its text fields, or into the reason it is unusable.

Shared by the preprocessing workers and the tokenizer trainer so both skip exactly the
same records for exactly the same reasons.
"""
from __future__ import annotations

import json
from typing import Optional, Sequence, Tuple

try:  # orjson parses several times faster; the standard library is the fallback
    import orjson as _orjson

    def _loads(raw: bytes):
        return _orjson.loads(raw)
except ImportError:  # pragma: no cover - depends on the environment
    _orjson = None

    def _loads(raw: bytes):
        return json.loads(raw.decode("utf-8"))

BLANK = "blank line"
NOT_UTF8 = "not UTF-8"
NOT_JSON = "not valid JSON"
NOT_OBJECT = "not a JSON object"
EMPTY = "empty document"


def missing_field(key: str) -> str:
    return f"missing field {key!r}"


def not_text(key: str) -> str:
    return f"field {key!r} is not a string"


def extract_fields(item, keys: Sequence[str], is_raw_line: bool
                   ) -> Tuple[Optional[tuple], Optional[str]]:
    """(values, None) for a usable record, (None, reason) otherwise.

    `item` is a raw jsonl line (bytes) or a tuple of already-extracted field values.
    """
    if is_raw_line:
        if not item.strip():
            return None, BLANK
        try:
            item.decode("utf-8")
        except UnicodeDecodeError:
            return None, NOT_UTF8
        try:
            record = _loads(item)
        except ValueError:
            return None, NOT_JSON
        if not isinstance(record, dict):
            return None, NOT_OBJECT
        values = tuple(record.get(k) for k in keys)
    else:
        values = item
    for key, value in zip(keys, values):
        if value is None:
            return None, missing_field(key)
        if not isinstance(value, str):
            return None, not_text(key)
    if any(not v.strip() for v in values):
        return None, EMPTY
    return values, None
