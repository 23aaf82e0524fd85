"""Token strings for per-token records: each vocabulary id is decoded once per tokenizer, not once per use.

Design choices:
- A record shows each token as `tokenizer.decode([id])` (special tokens kept; a partial UTF-8 sequence
  shows as the replacement character). One step's records decode a few thousand tokens drawn from a few
  hundred distinct ids, and each `decode` call costs Python overhead, so the strings are cached per id.
- The table fills lazily, the ids not seen yet decoded in one `batch_decode` call, so a 151936-id
  vocabulary is never decoded in full unless every id appears.
- Tables are keyed weakly by the tokenizer object (a tokenizer that goes away takes its table with it) and
  filled under a lock: records are built on the training thread while a page may read them elsewhere.
"""
from __future__ import annotations

import threading
import weakref

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """`[tokenizer.decode([i]) for i in ids]`, from the tokenizer's cached id -> string table."""
    with _LOCK:
        table: dict[int, str] = _TABLES.setdefault(tokenizer, {})
        missing = sorted(set(ids).difference(table))
        if missing:
            table.update(zip(missing, tokenizer.batch_decode([[i] for i in missing])))
        return [table[i] for i in ids]
