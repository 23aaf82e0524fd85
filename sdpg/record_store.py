"""Columnar storage of per-token rollout records: one compressed `.npz` shard per step, the run's token strings once.

Legend: N tokens of a step's recorded responses, k top-k width, R responses of a step.

Design choices:
- A step's recorded groups are one shard `rollouts/step_<step>.npz`: every per-token field of `TOKEN_FIELDS` is
  one typed column over the step's responses end to end (float32 log-probs, KL and entropy; int32 token indices;
  float16 top-k probabilities), with `offsets` (R + 1,) cutting it into responses; the scalars (prompt, texts,
  rewards, ...) are one JSON `meta` member. About 90 bytes per recorded token before compression.
- Token strings are stored once per run, in `rollouts/vocab.jsonl` (append-only lines of new strings); shards
  hold int32 indices into it. Records built from a tokenizer carry its ids (`token_ids`, `TopK.ids`) and a
  string table, mapped to run indices with one vectorised lookup; records given as strings (old runs, tests)
  map through a string dictionary. The vocabulary file keeps each string's tokenizer id (-1 when it came as a
  string), so a response read back carries its sampled `token_ids` again when every one of its tokens has one:
  re-encoding the decoded text with a BPE tokenizer does not always give the sampled ids.
- Crash safety: a step's new strings are appended (flushed) first, then its shard is written to a temporary
  sibling, fsynced and renamed into place, then one line is appended to `rollouts/index.jsonl`. A kill at any
  point loses at most that step; a shard renamed but not yet indexed is found by listing the folder on open.
  A shard that cannot be read (torn, damaged) is skipped and named in the stream's `bad_lines`.
- A shard reads lazily: `np.load` of an npz opens only the members asked for, and responses are views into
  the step's columns (no copy per response). `StepCache` bounds what is held in memory in bytes.
- Top-k next tokens are `TopK` objects: `topk[t]` is the list of (token, prob) pairs at position t, as the old
  list-of-lists records were, so readers index both alike.
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np

SHARD_DIR = "rollouts"
INDEX_FILE = "index.jsonl"
VOCAB_FILE = "vocab.jsonl"
FLOAT_FIELDS = ("student_logp", "teacher_logp", "old_logp", "sampler_logp", "ref_logp", "kl", "entropy")
"""per-token float32 columns (absent from a response: NaN in the column, and left out of the response dict)"""
TOPK_FIELDS = ("student_topk", "teacher_topk")
TOKEN_FIELDS = ("tokens", *FLOAT_FIELDS, *TOPK_FIELDS)
TEXT_HEAD = 300
"""characters of a response's text kept in the step index (`RecordStream.group_index`)"""


class TopK:
    """Top-k next tokens at each position: `ids` (T, k) indices into `vocab` (an object array of strings),
    `probs` (T, k). `topk[t]` is [(token, prob), ...] best first (entries of probability 0 left out); `len(topk)`
    is T; a slice is a TopK."""

    __slots__ = ("ids", "probs", "vocab")

    def __init__(self, ids: np.ndarray, probs: np.ndarray, vocab: np.ndarray):
        self.ids, self.probs, self.vocab = ids, probs, vocab

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, t):
        if isinstance(t, slice):
            return TopK(self.ids[t], self.probs[t], self.vocab)
        pairs = zip(self.ids[t].tolist(), self.probs[t].tolist())
        return [(str(self.vocab[i]), float(p)) for i, p in pairs if p > 0]  # p = 0: padding of a narrower top-k

    def __iter__(self):
        return (self[t] for t in range(len(self)))

    def strings(self) -> np.ndarray:
        """(T, k) token strings."""
        return self.vocab[self.ids]

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.probs.nbytes


def as_float_array(values) -> np.ndarray:
    """A per-token field as float32, None (JSON's NaN) and infinities as NaN: no value."""
    if isinstance(values, np.ndarray):
        out = values.astype(np.float32, copy=False)
    else:
        out = np.array([np.nan if v is None else v for v in values], dtype=np.float32)
    if not np.isfinite(out).all():
        out = np.where(np.isfinite(out), out, np.float32(np.nan))
    return out


class RunVocab:
    """The run's token strings (index -> string), with the maps that turn record tokens into indices."""

    def __init__(self):
        self.strings: list[str] = []
        self.ids: list[int] = []
        """each string's tokenizer id, -1 when it came as a string"""
        self._by_string: dict[str, int] = {}
        self._by_id = np.full(0, -1, dtype=np.int64)  # tokenizer id -> run index
        self._table = np.empty(0, dtype=object)
        self._id_table = np.empty(0, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.strings)

    def add(self, strings: list[str], ids: list[int]) -> None:
        """Append strings (read from the vocabulary file); `ids` are their tokenizer ids or -1."""
        for s, i in zip(strings, ids, strict=True):
            self._by_string.setdefault(s, len(self.strings))
            if i >= 0:
                self._map_id(i, len(self.strings))
            self.strings.append(s)
            self.ids.append(i)

    def _map_id(self, token_id: int, index: int) -> None:
        self._grow(token_id + 1)
        self._by_id[token_id] = index

    def _grow(self, size: int) -> None:
        if size > self._by_id.shape[0]:
            grown = np.full(max(size, 2 * self._by_id.shape[0]), -1, dtype=np.int64)
            grown[:self._by_id.shape[0]] = self._by_id
            self._by_id = grown

    def table(self) -> np.ndarray:
        """All strings as an object array (index -> string), rebuilt only when strings were added."""
        if self._table.shape[0] != len(self.strings):
            table = np.empty(len(self.strings), dtype=object)
            table[:] = self.strings
            self._table = table
        return self._table

    def id_table(self) -> np.ndarray:
        """All tokenizer ids (index -> id, -1 for a string without one), rebuilt only when strings were added."""
        if self._id_table.shape[0] != len(self.ids):
            self._id_table = np.asarray(self.ids, dtype=np.int32)  # (len,)
        return self._id_table

    def indices_of_ids(self, ids: np.ndarray, strings: np.ndarray, new: list) -> np.ndarray:
        """Run indices of tokenizer `ids` (any shape), `strings` their token strings (same shape); ids not seen
        before are added and listed in `new` as (string, id)."""
        flat, strs = ids.reshape(-1).astype(np.int64), np.asarray(strings, dtype=object).reshape(-1)  # (n,), (n,)
        if flat.size:
            self._grow(int(flat.max()) + 1)
        missing = np.nonzero(self._by_id[flat] < 0)[0]  # (m,)
        if missing.size:
            uniq, first = np.unique(flat[missing], return_index=True)
            for token_id, j in zip(uniq.tolist(), missing[first].tolist()):
                s = str(strs[j])
                self._map_id(token_id, len(self.strings))
                self._by_string.setdefault(s, len(self.strings))
                self.strings.append(s)
                self.ids.append(token_id)
                new.append((s, token_id))
        return self._by_id[flat].reshape(ids.shape).astype(np.int32)

    def indices_of_strings(self, strings, new: list) -> np.ndarray:
        """Run indices of token strings; new ones are added and listed in `new` as (string, -1)."""
        out = np.empty(len(strings), dtype=np.int32)
        for j, s in enumerate(strings):
            s = str(s)
            index = self._by_string.get(s)
            if index is None:
                index = self._by_string[s] = len(self.strings)
                self.strings.append(s)
                self.ids.append(-1)
                new.append((s, -1))
            out[j] = index
        return out


# ---------------------------------------------------------------------------------------------- packing

def pack_step(step: int, groups: list[dict], vocab: RunVocab) -> tuple[dict[str, np.ndarray], dict, list]:
    """A step's groups as shard columns and meta, and the strings new to `vocab` as (string, tokenizer id)."""
    new: list = []
    responses = [r for g in groups for r in g["responses"]]
    lengths = [response_length(r) for r in responses]
    offsets = np.zeros(len(responses) + 1, dtype=np.int64)  # (R+1,)
    offsets[1:] = np.cumsum(lengths)
    n = int(offsets[-1])
    k = max((r[f].ids.shape[1] if isinstance(r[f], TopK) else max((len(x) for x in r[f]), default=0)
             for r in responses for f in TOPK_FIELDS if f in r and len(r[f])), default=0)
    cols = {"offsets": offsets, "tokens": np.zeros(n, dtype=np.int32)}  # (N,)
    cols |= {f: np.full(n, np.nan, dtype=np.float32) for f in FLOAT_FIELDS}  # (N,) each
    for f in TOPK_FIELDS:
        cols[f"{f}_ids"] = np.zeros((n, k), dtype=np.int32)  # (N, k)
        cols[f"{f}_probs"] = np.zeros((n, k), dtype=np.float16)  # (N, k)
    present = []
    for r, lo, hi in zip(responses, offsets[:-1].tolist(), offsets[1:].tolist()):
        present.append(_pack_response(r, cols, lo, hi, vocab, new))
    meta = {"step": int(step), "fields": present, "groups": [
        {**{key: v for key, v in g.items() if key != "responses"}, "step": int(step),
         "responses": [{key: v for key, v in r.items() if key not in TOKEN_FIELDS and key != "token_ids"}
                       for r in g["responses"]]} for g in groups]}
    for f in FLOAT_FIELDS:  # a column no response has is not stored
        if not any(f in p for p in present):
            del cols[f]
    return cols, meta, new


def response_length(r: dict) -> int:
    """Tokens of a response: its `tokens`, else its longest per-token field."""
    if r.get("tokens") is not None:
        return len(r["tokens"])
    return max((len(r[f]) for f in (*FLOAT_FIELDS, *TOPK_FIELDS) if r.get(f) is not None), default=0)


def _pack_response(r: dict, cols: dict, lo: int, hi: int, vocab: RunVocab, new: list) -> list[str]:
    """Copy one response's per-token fields into rows lo:hi of the columns; returns the fields it has."""
    has = []
    if r.get("tokens") is not None:
        has.append("tokens")
        if "token_ids" in r:
            cols["tokens"][lo:hi] = vocab.indices_of_ids(np.asarray(r["token_ids"]), r["tokens"], new)
        else:
            cols["tokens"][lo:hi] = vocab.indices_of_strings(r["tokens"], new)
    for f in FLOAT_FIELDS:
        if r.get(f) is not None and len(r[f]) == hi - lo:
            cols[f][lo:hi] = as_float_array(r[f])
            has.append(f)
    for f in TOPK_FIELDS:
        top = r.get(f)
        if top is None or len(top) != hi - lo or hi == lo:
            continue
        ids, probs = cols[f"{f}_ids"], cols[f"{f}_probs"]
        if isinstance(top, TopK):
            ids[lo:hi, :top.ids.shape[1]] = (vocab.indices_of_ids(top.ids, top.strings(), new) if "token_ids" in r
                                             else vocab.indices_of_strings(top.strings().reshape(-1), new)
                                             .reshape(top.ids.shape))
            probs[lo:hi, :top.ids.shape[1]] = top.probs
        else:  # [[token, prob], ...] per position (old records, hand-built ones)
            for t, pairs in enumerate(top):
                ids[lo + t, :len(pairs)] = vocab.indices_of_strings([tok for tok, _ in pairs], new)
                probs[lo + t, :len(pairs)] = [p for _, p in pairs]
        has.append(f)
    return has


def unpack_step(cols, meta: dict, vocab: np.ndarray, vocab_ids: np.ndarray | None = None) -> list[dict]:
    """The groups of a shard: responses hold views into the step's columns (`cols`: name -> array). With
    `vocab_ids` (`RunVocab.id_table`), a response whose tokens all have a tokenizer id gets them as `token_ids`."""
    offsets = cols["offsets"].tolist()
    tokens = vocab[cols["tokens"]] if len(vocab) else np.empty(len(cols["tokens"]), dtype=object)  # (N,) shared str
    token_ids = vocab_ids[cols["tokens"]] if vocab_ids is not None and len(vocab_ids) else None  # (N,) int32
    floats = {f: cols[f] for f in FLOAT_FIELDS if f in cols}
    tops = {f: (cols[f"{f}_ids"], cols[f"{f}_probs"]) for f in TOPK_FIELDS}
    groups, i = [], 0
    for g in meta["groups"]:
        responses = []
        for r in g["responses"]:
            lo, hi, has = offsets[i], offsets[i + 1], meta["fields"][i]
            rec = {**r, "tokens": tokens[lo:hi]} if "tokens" in has else dict(r)
            if "tokens" in has and token_ids is not None and (token_ids[lo:hi] >= 0).all():
                rec["token_ids"] = token_ids[lo:hi]
            rec |= {f: floats[f][lo:hi] for f in FLOAT_FIELDS if f in has}
            rec |= {f: TopK(tops[f][0][lo:hi], tops[f][1][lo:hi], vocab) for f in TOPK_FIELDS if f in has}
            responses.append(rec)
            i += 1
        groups.append({**g, "responses": responses})
    return groups


def step_nbytes(cols: dict[str, np.ndarray], meta_bytes: int) -> int:
    """Memory held by a step's unpacked groups: its columns, the token string references and ids, and the scalars."""
    return sum(a.nbytes for a in cols.values()) + 12 * len(cols["tokens"]) + meta_bytes


def response_summary(r: dict) -> dict:
    """The scalars of one recorded response and its per-token KL's mean and largest value (None without KL)."""
    kl = as_float_array(r["kl"]) if r.get("kl") is not None and len(r["kl"]) else np.empty(0, np.float32)
    finite = kl[np.isfinite(kl)]
    return {"reward": r.get("reward"), "correct": r.get("correct"), "status": r.get("status"),
            "advantage": r.get("advantage"), "gate": r.get("gate"), "length": len(r.get("tokens", ())),
            "kl_mean": float(finite.mean()) if finite.size else None,
            "kl_max": float(finite.max()) if finite.size else None,
            "text_head": str(r.get("text", ""))[:TEXT_HEAD]}


def group_summaries(groups: list[dict]) -> list[dict]:
    """One cheap dict per group for the step index: scalars and per-response KL summaries, no per-token arrays."""
    return [{"step": g.get("step"), "group": g.get("group"), "prompt": g.get("prompt"), "answer": g.get("answer"),
             "responses": [response_summary(r) for r in g["responses"]]} for g in groups]


# ---------------------------------------------------------------------------------------------- files

def shard_name(step: int) -> str:
    return f"step_{step:07d}.npz"


def write_atomically(path: Path, mode: str, write) -> None:
    """Write `path` through `write(f)` atomically: a temporary sibling opened with `mode`, fsynced, renamed over
    the original; a failure leaves the original whole and no temporary behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_shard(path: Path, cols: dict[str, np.ndarray], meta: dict) -> int:
    """Write a shard atomically (`write_atomically`); returns its size in bytes."""
    meta_arr = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_atomically(path, "wb", lambda f: np.savez_compressed(f, meta=meta_arr, **cols))
    return path.stat().st_size


class ShardError(ValueError):
    """A shard cannot be read: torn by a crash outside the writer's protocol, or damaged."""


def read_shard(path: Path, *, meta_only: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """The columns (unless `meta_only`) and meta of a shard; ShardError naming the file if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            cols = {} if meta_only else {name: z[name] for name in z.files if name != "meta"}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, io.UnsupportedOperation,
            UnicodeDecodeError) as err:
        raise ShardError(f"{path}: unreadable shard ({type(err).__name__}: {str(err)[:80]})") from None
    if not isinstance(meta, dict) or "groups" not in meta:
        raise ShardError(f"{path}: unreadable shard (its meta is not a step record)")
    return cols, meta


def append_line(path: Path, line: str) -> None:
    with open(path, "a") as f:
        f.write(line)
        f.flush()


def complete_lines(path: Path, offset: int) -> tuple[list[str], int]:
    """Complete lines of `path` from byte `offset`, and the offset after them (a torn last line waits)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    return data[:end].decode(errors="replace").splitlines(), offset + end


class StepCache:
    """Unpacked steps kept in memory, least recently used dropped first, bounded by `budget` bytes (the step
    just added stays even when it alone is over the budget)."""

    def __init__(self, budget: int):
        self.budget = budget
        self._steps: OrderedDict[int, tuple[list[dict], int]] = OrderedDict()
        self.nbytes = 0

    def get(self, step: int) -> list[dict] | None:
        hit = self._steps.get(step)
        if hit is None:
            return None
        self._steps.move_to_end(step)
        return hit[0]

    def put(self, step: int, groups: list[dict], nbytes: int) -> list[int]:
        """Keep `groups` of `step`; returns the steps dropped to stay within the budget."""
        self.drop(step)
        self._steps[step] = (groups, nbytes)
        self.nbytes += nbytes
        dropped = []
        while self.nbytes > self.budget and len(self._steps) > 1:
            old, (_, size) = self._steps.popitem(last=False)
            self.nbytes -= size
            dropped.append(old)
        return dropped

    def drop(self, step: int) -> None:
        old = self._steps.pop(step, None)
        if old is not None:
            self.nbytes -= old[1]

    def steps(self) -> list[int]:
        return list(self._steps)
