"""Token strings for per-token records: each vocabulary id is decoded once per tokenizer, not once per use.

Design choices:
- A record shows each token as `tokenizer.decode([id])` (special tokens kept). A byte-level BPE token that is
  only part of a UTF-8 character (Qwen's vocabulary has thousands) decodes to U+FFFD; such a token's raw bytes
  are recovered from its vocabulary entry (the GPT-2 byte-to-unicode alphabet) and kept as lone surrogates
  (Python's `surrogateescape`: byte 0xE4 -> U+DCE4), so views can mark exactly which bytes it holds
  (`lab.style.show_token`) and two such tokens never look alike. Tokenizers without that alphabet keep U+FFFD.
- One step's records decode a few thousand tokens drawn from a few hundred distinct ids, and each `decode`
  call costs Python overhead, so the strings are cached per id in an object array (id -> string) that the
  records index with numpy, filled lazily: ids not seen yet are decoded in one `batch_decode` call, so a
  151936-id vocabulary is never decoded in full unless every id appears.
- Tables are keyed weakly by the tokenizer object (a tokenizer that goes away takes its table with it) and
  filled under a lock: records are built on the training thread while a page may read them elsewhere.
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()
REPLACEMENT = "\ufffd"


def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode alphabet that byte-level BPE vocabularies are written in."""
    visible = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(visible), 0
    for b in range(256):
        if b not in visible:
            visible.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(visible, chars)}


BYTE_DECODER = _byte_decoder()


def raw_token_string(tokenizer, token_id: int, decoded: str) -> str:
    """`decoded`, or where it holds U+FFFD and the vocabulary entry is byte-level BPE, the token's bytes with the
    ones that are not whole UTF-8 characters as lone surrogates."""
    if REPLACEMENT not in decoded:
        return decoded
    piece = tokenizer.convert_ids_to_tokens(int(token_id))
    if not isinstance(piece, str) or not piece or any(ch not in BYTE_DECODER for ch in piece):
        return decoded
    return bytes(BYTE_DECODER[ch] for ch in piece).decode("utf-8", errors="surrogateescape")


def string_table(tokenizer, ids) -> np.ndarray:
    """The tokenizer's id -> string object array, with every id of `ids` (any int array-like) decoded."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    with _LOCK:
        table, known = _TABLES.get(tokenizer, (np.empty(0, dtype=object), np.zeros(0, dtype=bool)))
        top = int(ids.max()) + 1 if ids.size else 0
        if top > table.shape[0]:
            size = max(top, len(tokenizer) if hasattr(tokenizer, "__len__") else 0)
            table = np.concatenate([table, np.full(size - table.shape[0], "", dtype=object)])
            known = np.concatenate([known, np.zeros(size - known.shape[0], dtype=bool)])
        missing = np.unique(ids[~known[ids]]).tolist()
        if missing:
            decoded = tokenizer.batch_decode([[i] for i in missing])
            for i, s in zip(missing, decoded):
                table[i] = raw_token_string(tokenizer, i, s)
            known[missing] = True
        _TABLES[tokenizer] = (table, known)
        return table


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    """`[tokenizer.decode([i]) for i in ids]` (partial UTF-8 kept as bytes, see above), from the cached table."""
    return string_table(tokenizer, ids)[np.asarray(ids, dtype=np.int64)].tolist() if len(ids) else []
