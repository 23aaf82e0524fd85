"""The record stream: the only thing the engine shares with the dashboard, notebooks and replays.

Design choices:
- Three kinds of record:
  * metrics  — one flat dict per training step with namespaced keys (`reward/mean`, `kl/distill_mean`,
    `eval/pass@1`, ...) plus `step` and `time` (seconds since the run started). Keys may be absent
    from a row (evaluation runs only every N steps).
  * rollouts — per step, a few whole groups with per-token arrays (see `ROLLOUT_FIELDS`).
  * events   — lifecycle, checkpoints, skipped updates, data and health warnings: one of the names of `EVENTS`
    (the schema: each event's meaning and fields); `emit_event` refuses any other name.
- Metrics and events are small: appended to JSON-lines files as emitted (flushed, so a crashed run keeps
  everything up to the crash) and kept in memory. Rollouts are large (65k recorded tokens per step at a
  real shape): one columnar shard per step with the run's token strings stored once (`sdpg.record_store`,
  crash-safe the same way), an index line per step, and an in-memory cache of unpacked steps bounded in
  bytes (`cache_mb`, `run.record_cache_mb`), live and in replay alike. `open(run_dir)` reads metrics,
  events and the step index; a step's groups are read when asked for (`rollouts(step)`).
- In memory a response's per-token fields are numpy arrays (float32, NaN where the run had no value; `tokens`
  an array of strings) and top-k fields `TopK` objects; readers treat them as array-likes. An old run's
  `rollouts.jsonl` (JSON lists) still replays: its steps' byte ranges are indexed on open and each step is
  parsed into the same form when shown.
- Thread-safe: the training thread writes, UI threads read. Any number of viewer threads may `refresh()` one
  stream: reading new bytes and advancing the file offset is one step under a lock, and only complete lines
  are taken (a partial last line waits for the next refresh).
- A bad line (not JSON, not a record, or a row that breaks the schema: `row_problem`, e.g. a metric that is
  not a number) or an unreadable shard is skipped and reported by file (and line) in `bad_lines`, so one
  damaged record does not hide the rest of a run and never reaches a view. A config field of the wrong type is
  left out the same way.
- Files are never truncated in place: `truncate_after` writes the kept part to a temporary sibling,
  fsyncs it and renames it over the original, so a kill mid-rewrite leaves the old file whole.
- A write that fails (read-only folder, full disk) raises `StorageError` naming the file and the cause.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpg.config import config_file_problems
from sdpg.metrics import metrics_row_problem
from sdpg.record_store import (INDEX_FILE, SHARD_DIR, VOCAB_FILE, RunVocab, ShardError, StepCache, append_line,
                               complete_lines, group_summaries, pack_step, read_shard, shard_name, step_nbytes,
                               unpack_step, write_atomically, write_shard)

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
"""an old run's rollout records (JSON lines); this version writes shards under `sdpg.record_store.SHARD_DIR`"""
EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.json"
DEFAULT_CACHE_MB = 256.0
"""per-token records a stream keeps in memory by default (MiB): ~40 steps of 2 groups x 8 x 4096 tokens"""
MAX_BAD_LINES = 50
"""how many bad-line messages a stream keeps (the count goes on)"""

ROLLOUT_FIELDS = {
    "step": "training step the group was sampled at",
    "group": "index of the group within the step",
    "prompt": "student prompt text", "context": "privileged context (teacher only)", "answer": "gold answer",
    "responses": "list of per-response dicts, see RESPONSE_FIELDS",
}
RESPONSE_FIELDS = {
    "text": "decoded response", "reward": "verifier reward (after any overlong penalty)",
    "correct": "verifier verdict", "status": "verifier status: ok, no_answer, timeout, error",
    "advantage": "group advantage A_i",
    "gate": "the distillation gate passes: the method's own gate (SDPG: A_i > 0), every response when "
            "loss.gate is off, SDPG's A_i > 0 as a what-if for a method without one",
    "tokens": "response tokens as text, one per position (stored as indices into the run's vocabulary)",
    "token_ids": "the sampled tokenizer ids, one per position (absent when the records came as strings only)",
    "student_logp": "log p(y_t) under the student (current policy, sampling temperature)",
    "teacher_logp": "log q(y_t) under the teacher (privileged prompt)",
    "old_logp": "the PPO ratio's old log-prob: the sampling policy's, recomputed by the training model unless "
                "rollout.recompute_old_logp is off",
    "sampler_logp": "log-prob of the token under the sampler (the rollout engine), before any recompute",
    "ref_logp": "log-prob under the frozen reference model (absent when alpha = 0 and not needed)",
    "kl": "per-token KL(p_t || q_t) over the full vocabulary", "entropy": "student entropy per token",
    "student_topk": "top-k of the student: `topk[t]` is [(token, prob), ...] (`sdpg.record_store.TopK`)",
    "teacher_topk": "top-k of the teacher, the same way",
}


@dataclass(frozen=True)
class Event:
    """One kind of event: what it means and the fields it carries (besides `event` and `wall`)."""

    meaning: str
    fields: dict[str, str]
    """field name -> meaning"""
    status: str | None = None
    """the run status this event puts a recorded run in (read by the views), None if it leaves it as it was"""


EVENTS: dict[str, Event] = {
    "start": Event("training starts (fresh or resumed)", {
        "run_dir": "the run directory", "resume": "whether it resumes from a checkpoint",
        "engine": "\"trl\" for the TRL-based trainer (absent: the engine)", "processes": "training processes (TRL)"},
        status="running"),
    "resume_from": Event("state restored from a checkpoint", {"step": "training step restored",
                                                              "checkpoint": "checkpoint folder"}, status="running"),
    "resume_changes": Event("settings changed on resume", {"step": "training step",
                                                           "changes": "setting -> [old, new]"}),
    "pause": Event("paused by the user", {"step": "training steps done"}, status="paused"),
    "resume": Event("resumed after a pause", {"step": "training steps done"}, status="running"),
    "checkpoint": Event("a checkpoint was written", {"step": "training step", "path": "checkpoint folder"}),
    "step_skipped": Event("an optimizer update was not applied (NaN or inf)", {
        "step": "training step", "reason": "what was non-finite"}),
    "finished": Event("the run trained all its steps", {"step": "training steps done"}, status="finished"),
    "stopped": Event("the run was stopped before its last step", {
        "step": "training steps done", "during": "the long phase a stop cut short (absent: between steps)",
        "note": "why there is no checkpoint, when the stop came before the model was ready"}, status="stopped"),
    "checkpoint_skipped": Event("resume passed over a checkpoint that does not verify", {
        "checkpoint": "checkpoint folder", "reason": "which file failed its recorded size or hash"}),
    "error": Event("the run crashed", {"step": "training steps done", "message": "the exception's message",
                                       "traceback": "its traceback"}, status="crashed"),
    "health": Event("a health check found a problem (`sdpg.health`)", {
        "step": "training step", "check": "the check's name", "message": "what was seen",
        "severity": "warning or error"}),
    "data_rows_skipped": Event("bad data rows were left out", {
        "split": "train or val", "file": "data file", "count": "rows skipped", "kept": "rows kept",
        "reasons": "the first problems", "message": "one line for a person"}),
    "data_no_context": Event("rows without a teacher context for a teacher-using method", {
        "split": "train or val", "file": "data file", "count": "rows without context", "rows": "rows in all",
        "message": "one line for a person"}),
    "warmstart": Event("progress of the embedded model's warm start (or that it came from the cache)", {
        "step": "warm-start step", "steps": "warm-start steps in all", "loss": "training loss",
        "target": "student pass@1 that stops it early", "elapsed_s": "seconds so far",
        "check": "student pass@1 at a skill check", "cached": "true when loaded from the cache",
        "path": "cache entry", "student_pass@1": "cached student pass@1", "teacher_pass@1": "cached teacher pass@1"}),
}
"""every event the engine, the run handle and the TRL callback write"""


def check_event(kind: str) -> Event:
    """The schema of event `kind`; ValueError naming it when it is not one of `EVENTS`."""
    if kind not in EVENTS:
        raise ValueError(f"unknown event {kind!r}; known events: {sorted(EVENTS)} (add it to sdpg.records.EVENTS)")
    return EVENTS[kind]


def row_problem(fname: str, row) -> str | None:
    """Why a row read back from record file `fname` breaks the schema (a view could not draw it), or None."""
    if fname == EVENTS_FILE:
        return None if isinstance(row, dict) and isinstance(row.get("event"), str) else \
            "not a record (expected a JSON object with a string 'event')"
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        return "not a record (expected a JSON object with an integer 'step')"
    if fname == METRICS_FILE:
        return metrics_row_problem(row)
    responses = row.get("responses")
    if not isinstance(row.get("group"), int) or not isinstance(responses, list) or \
            not all(isinstance(r, dict) for r in responses):
        return "not a group record (expected an integer 'group' and a list of response objects)"
    return None


class StorageError(OSError):
    """Writing a run's files failed: the message says what, where and why, for a person to act on."""


def storage_error(what: str, path: str | Path, err: OSError) -> StorageError:
    """A StorageError for `err` while doing `what` (e.g. "write records to") at `path`."""
    reasons = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied", errno.ENOSPC: "the disk is full",
               errno.EDQUOT: "the disk quota is exceeded"}
    why = reasons.get(err.errno, err.strerror or str(err))
    fix = "free some space or choose" if err.errno in (errno.ENOSPC, errno.EDQUOT) else "choose"
    return StorageError(f"cannot {what} {path}: {why} ({err.strerror or err}); {fix} another run directory "
                        "(--run.run_dir; the dashboard's --runs-root)")


def replace_file(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (`write_atomically`), then fsync its folder."""
    write_atomically(path, "w", lambda f: f.write(text))
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must survive a power cut
    finally:
        os.close(dir_fd)


def json_safe(value: Any) -> Any:
    """JSON has no NaN/inf: write them as None so every reader can parse the files."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class RecordStream:
    """Metrics and events in memory and in JSON-lines files; per-token rollout records in columnar step shards
    (`sdpg.record_store`), read on demand into a cache bounded in bytes (`cache_mb`)."""

    def __init__(self, run_dir: str | Path | None, *, cache_mb: float = DEFAULT_CACHE_MB, write: bool = True):
        self.run_dir = Path(run_dir) if run_dir else None
        self._lock = threading.RLock()  # truncate_after re-indexes an old run under it
        self._refresh_lock = threading.Lock()
        self._metrics: list[dict] = []
        self._events: list[dict] = []
        self._cache = StepCache(int(cache_mb * 2**20))
        self._index: dict[int, dict] = {}  # step -> {"file", "groups": group summaries} (or {"legacy": [...]})
        self._vocab = RunVocab()
        self._offsets = {METRICS_FILE: 0, EVENTS_FILE: 0, INDEX_FILE: 0, VOCAB_FILE: 0}
        self._lines = {METRICS_FILE: 0, EVENTS_FILE: 0, ROLLOUTS_FILE: 0}
        self.bad_lines: list[str] = []
        """'<file> line <n>: <why>' or '<shard>: <why>' for each skipped line or shard (the first MAX_BAD_LINES)"""
        self.bad_line_count = 0
        self._config_problems: set[str] = set()
        self._write = write and self.run_dir is not None
        self._t0 = time.time()
        if self._write:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                (self.run_dir / SHARD_DIR).mkdir(exist_ok=True)
                with open(self.run_dir / EVENTS_FILE, "a"):  # fail now, with a message, not mid-run
                    pass
            except OSError as err:
                raise storage_error("write records to", self.run_dir, err) from err
            self._load_existing()

    # ---- writing (training thread) ----
    def emit_metrics(self, step: int, metrics: dict[str, float]) -> dict:
        return self._append(METRICS_FILE, self._metrics, {"step": int(step), "time": round(time.time() - self._t0, 3),
                                                          **metrics})

    def emit_rollouts(self, step: int, groups: list[dict]) -> None:
        """Store a step's recorded groups: its new token strings, then its shard, then its index line."""
        if not groups:
            return
        step = int(step)
        with self._lock:
            cols, meta, new = pack_step(step, groups, self._vocab)
            meta = json_safe(meta)
            groups = unpack_step(cols, meta, self._vocab.table(), self._vocab.id_table())
            entry = {"step": step, "file": shard_name(step), "groups": json_safe(group_summaries(groups))}
            if self._write:
                shards = self.run_dir / SHARD_DIR
                try:
                    if new:
                        append_line(shards / VOCAB_FILE, json.dumps({"from": len(self._vocab) - len(new),
                                                                     "strings": [s for s, _ in new],
                                                                     "ids": [i for _, i in new]}) + "\n")
                    write_shard(shards / entry["file"], cols, meta)
                    append_line(shards / INDEX_FILE, json.dumps(entry) + "\n")
                except OSError as err:
                    raise storage_error("write records to", shards, err) from err
            self._index[step] = entry
            self._keep(step, groups, step_nbytes(cols, len(json.dumps(meta))))

    def emit_event(self, kind: str, **info: Any) -> dict:
        """Write an event of a kind the schema knows (`EVENTS`; ValueError otherwise)."""
        check_event(kind)
        return self._append(EVENTS_FILE, self._events, {"event": kind, "wall": time.time(), **info})

    def write_config(self, config: dict) -> None:
        if self._write:
            path = self.run_dir / CONFIG_FILE
            try:
                replace_file(path, json.dumps(config, indent=2))
            except OSError as err:
                raise storage_error("write the run config to", path, err) from err

    def _append(self, fname: str, buf, row: dict) -> dict:
        """Keep and write `row`, NaN/inf as None (`json_safe`); returns the row as kept."""
        try:  # the common case, checked by the C encoder: nothing to replace
            line = json.dumps(row, allow_nan=False) + "\n"
        except ValueError:
            row = json_safe(row)
            line = json.dumps(row) + "\n"
        with self._lock:
            buf.append(row)
            if self._write:
                try:
                    with open(self.run_dir / fname, "a") as f:
                        f.write(line)
                except OSError as err:
                    raise storage_error("write records to", self.run_dir / fname, err) from err
                self._offsets[fname] += len(line.encode())
        return row

    def _keep(self, step: int, groups: list[dict], nbytes: int) -> None:
        """Cache a step's groups; a stream without files forgets the steps the byte budget drops."""
        for old in self._cache.put(step, groups, nbytes):
            if self.run_dir is None:
                self._index.pop(old, None)

    def _load_existing(self) -> None:
        """A resumed run keeps its history: read what is on disk, dropping a half-written last line."""
        for fname, buf in ((METRICS_FILE, self._metrics), (EVENTS_FILE, self._events)):
            path = self.run_dir / fname
            if not path.exists():
                continue
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                os.truncate(path, end)  # drops only the torn line; the rest of the file is never rewritten
            buf.extend(self._parse(fname, data[:end]))
            self._offsets[fname] = end
        for fname in (INDEX_FILE, VOCAB_FILE):
            path = self.run_dir / SHARD_DIR / fname
            if path.exists():
                size = path.stat().st_size
                _, end = complete_lines(path, 0)
                if end != size:
                    os.truncate(path, end)
        for tmp in (self.run_dir / SHARD_DIR).glob(".*.tmp"):
            tmp.unlink()  # a shard a kill interrupted: its step is redone or lost
        self.refresh_vocab()  # new strings continue the run's vocabulary
        self._read_rollout_index(scan=True)

    def truncate_after(self, step: int) -> None:
        """Drop metrics and rollouts newer than `step` (a resumed run redoes those steps); events stay.

        Files are replaced atomically (see `replace_file`) and newer shards removed after the index no longer
        names them: a kill mid-way leaves the old records whole.
        """
        with self._lock:
            kept = [r for r in self._metrics if r["step"] <= step]
            if self._write:
                text = "".join(json.dumps(r) + "\n" for r in kept)
                self._replace(self.run_dir / METRICS_FILE, text)
                self._offsets[METRICS_FILE] = len(text.encode())
            self._metrics[:] = kept
            dropped = [s for s in self._index if s > step]
            for s in dropped:
                self._cache.drop(s)
                del self._index[s]
            if self._write:
                index = "".join(json.dumps(e) + "\n" for s, e in sorted(self._index.items()) if "file" in e)
                self._replace(self.run_dir / SHARD_DIR / INDEX_FILE, index)
                self._offsets[INDEX_FILE] = len(index.encode())
                for s in dropped:
                    (self.run_dir / SHARD_DIR / shard_name(s)).unlink(missing_ok=True)
                self._truncate_legacy(step)

    def _replace(self, path: Path, text: str) -> None:
        try:
            replace_file(path, text)
        except OSError as err:
            raise storage_error("rewrite", path, err) from err

    def _truncate_legacy(self, step: int) -> None:
        """An old run's `rollouts.jsonl` keeps only lines of steps up to `step` (resuming it with this version)."""
        path = self.run_dir / ROLLOUTS_FILE
        if path.exists():
            data = path.read_bytes()
            lines = [ln for ln in data.split(b"\n")[:-1] if _legacy_step(ln) is not None and _legacy_step(ln) <= step]
            self._replace(path, b"".join(ln + b"\n" for ln in lines).decode())
            self._legacy_offsets()

    # ---- reading (any thread) ----
    def metrics(self) -> list[dict]:
        with self._lock:
            return list(self._metrics)

    def rollouts(self, step: int | None = None) -> list[dict]:
        """The recorded groups of `step`, read from its shard unless cached; every step's when `step` is None
        (a whole run: use `rollout_steps` and one step at a time on long runs)."""
        if step is None:
            return [g for s in self.rollout_steps() for g in self.rollouts(s)]
        with self._lock:
            cached = self._cache.get(step)
            entry = self._index.get(step)
        if cached is not None or entry is None:
            return list(cached or [])
        groups, nbytes = self._load_step(entry)
        with self._lock:
            self._keep(step, groups, nbytes)
        return list(groups)

    def rollout_steps(self) -> list[int]:
        with self._lock:
            return sorted(self._index)

    def group_index(self) -> list[dict]:
        """One cheap dict per recorded group, in step order: step, group, prompt, answer and per response its
        reward, correct, status, advantage, gate, length, kl_mean, kl_max and text_head (the text's first
        `TEXT_HEAD` characters); no per-token arrays. An old JSON-lines run's groups are read to make theirs."""
        out = []
        for step in self.rollout_steps():
            with self._lock:
                entry = self._index.get(step)
            if entry is None:
                continue
            if "groups" not in entry:
                entry["groups"] = group_summaries(self.rollouts(step))
            out.extend(entry["groups"])
        return out

    def cache_bytes(self) -> int:
        """Bytes of per-token records held in memory now (at most the budget, or one step over it)."""
        with self._lock:
            return self._cache.nbytes

    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def config(self) -> dict:
        """The run's settings; a file that is not JSON, not an object of sections, or a field of the wrong type
        is left out and reported once in `bad_lines`, so a damaged config never breaks a view."""
        path = self.run_dir / CONFIG_FILE if self.run_dir else None
        if not path or not path.exists():
            return {}
        try:
            kept, problems = config_file_problems(json.loads(path.read_text()))
        except (ValueError, RecursionError) as err:
            kept, problems = {}, [f"not valid JSON ({type(err).__name__}: {str(err)[:80]})"]
        for why in problems:
            if why not in self._config_problems:
                self._config_problems.add(why)
                self.bad_line_count += 1
                if len(self.bad_lines) < MAX_BAD_LINES:
                    self.bad_lines.append(f"{path}: {why}, ignored")
        return kept

    def _load_step(self, entry: dict) -> tuple[list[dict], int]:
        """A step's groups from its shard (or an old run's JSON lines); a shard that cannot be read gives none and
        is reported in `bad_lines`."""
        if "legacy" in entry:
            return self._load_legacy(entry)
        path = self.run_dir / SHARD_DIR / entry["file"]
        try:
            cols, meta = read_shard(path)
        except ShardError as err:
            with self._lock:
                if not entry.get("reported"):
                    entry["reported"] = True
                    self._note_bad(f"{err}, skipped")
            return [], 0
        if cols and int(cols["tokens"].max(initial=-1)) >= len(self._vocab):
            self.refresh_vocab()
        return (unpack_step(cols, meta, self._vocab.table(), self._vocab.id_table()),
                step_nbytes(cols, len(json.dumps(meta))))

    # ---- replay ----
    @classmethod
    def open(cls, run_dir: str | Path, *, cache_mb: float = DEFAULT_CACHE_MB) -> "RecordStream":
        """Open a run directory written by a (finished, stopped or crashed) run for browsing: metrics, events and
        the step index are read now, each step's per-token records when asked for."""
        run_dir = Path(run_dir)
        try:
            is_dir = run_dir.is_dir()
            has_records = is_dir and any((run_dir / f).exists() for f in (METRICS_FILE, EVENTS_FILE, CONFIG_FILE))
        except (OSError, ValueError) as err:  # a name too long for the file system, a NUL byte
            reason = getattr(err, "strerror", None) or str(err)
            raise ValueError(f"cannot open run directory {str(run_dir)[:80]!r}...: {reason}") from None
        if not is_dir:
            raise FileNotFoundError(f"run directory {run_dir} does not exist")
        if not has_records:
            raise ValueError(f"{run_dir} holds no run records ({METRICS_FILE}, {EVENTS_FILE} or {CONFIG_FILE})")
        stream = cls(run_dir, write=False, cache_mb=cache_mb)
        stream.refresh()
        stream._read_rollout_index(scan=True)
        return stream

    def refresh(self) -> int:
        """Read records appended to the files since the last call (for streams opened with `open`).

        Safe from any number of threads: one refresher at a time reads from the offset, advances it and
        appends the rows, so every complete line is taken exactly once and in file order.
        """
        if self._write or self.run_dir is None:
            return 0
        added = 0
        with self._refresh_lock:
            for fname, buf in ((METRICS_FILE, self._metrics), (EVENTS_FILE, self._events)):
                try:
                    with open(self.run_dir / fname, "rb") as f:
                        f.seek(self._offsets[fname])
                        data = f.read()
                except FileNotFoundError:
                    continue
                end = data.rfind(b"\n") + 1  # a half-written last line waits for the next refresh
                rows = self._parse(fname, data[:end])
                with self._lock:
                    buf.extend(rows)
                    self._offsets[fname] += end
                added += len(rows)
            added += self._read_rollout_index()
        return added

    def _read_rollout_index(self, scan: bool = False) -> int:
        """New step index lines; with `scan`, also shards a kill left unindexed and an old run's JSON lines."""
        shards = self.run_dir / SHARD_DIR
        lines, end = complete_lines(shards / INDEX_FILE, self._offsets[INDEX_FILE])
        added = 0
        with self._lock:
            self._offsets[INDEX_FILE] = end
            for line in lines:
                try:
                    entry = json.loads(line)
                    step = int(entry["step"])
                except (ValueError, KeyError, TypeError):
                    self._note_bad(f"{shards / INDEX_FILE}: a line that is not a step entry, skipped")
                    continue
                added += step not in self._index
                self._cache.drop(step)  # a rewritten step (a resumed run) is read again
                self._index[step] = entry
        if scan:
            added += self._scan_shards(shards)
            if (self.run_dir / ROLLOUTS_FILE).exists():
                self._legacy_offsets()
        return added

    def _scan_shards(self, shards: Path) -> int:
        """Index the shards written but not indexed (a kill between the rename and the index line)."""
        added = 0
        for path in sorted(shards.glob("step_*.npz")) if shards.is_dir() else []:
            if any(e.get("file") == path.name for e in self._index.values()):
                continue
            try:
                cols, meta = read_shard(path)
            except ShardError as err:
                self._note_bad(f"{err}, skipped")
                continue
            self.refresh_vocab()
            entry = {"step": meta["step"], "file": path.name,
                     "groups": group_summaries(unpack_step(cols, meta, self._vocab.table()))}
            with self._lock:
                self._index[meta["step"]] = entry
            added += 1
        return added

    def refresh_vocab(self) -> None:
        """Read token strings appended to the run's vocabulary since the last call."""
        if self.run_dir is None:
            return
        path = self.run_dir / SHARD_DIR / VOCAB_FILE
        with self._lock:
            lines, end = complete_lines(path, self._offsets[VOCAB_FILE])
            for line in lines:
                try:
                    row = json.loads(line)
                    if row["from"] != len(self._vocab):
                        raise ValueError(f"starts at {row['from']}, expected {len(self._vocab)}")
                    self._vocab.add(row["strings"], row["ids"])
                except (ValueError, KeyError, TypeError) as err:
                    self._note_bad(f"{path}: a bad vocabulary line ({str(err)[:80]}), skipped")
            self._offsets[VOCAB_FILE] = end

    # ---- old runs: rollouts as JSON lines ----
    def _legacy_offsets(self) -> None:
        """Byte ranges of each step's lines in an old run's `rollouts.jsonl` (read in full only when shown)."""
        path = self.run_dir / ROLLOUTS_FILE
        ranges: dict[int, list[tuple[int, int]]] = {}
        pos = 0
        with open(path, "rb") as f:
            for line in f:
                step = _legacy_step(line) if line.endswith(b"\n") else None
                if step is not None:
                    ranges.setdefault(step, []).append((pos, len(line)))
                pos += len(line)
        with self._lock:
            for step, spans in ranges.items():
                if "file" not in self._index.get(step, {}):
                    self._index[step] = {"step": step, "legacy": spans}

    def _load_legacy(self, entry: dict) -> tuple[list[dict], int]:
        data = b""
        with open(self.run_dir / ROLLOUTS_FILE, "rb") as f:
            for pos, size in entry["legacy"]:
                f.seek(pos)
                data += f.read(size)
        groups = self._parse(ROLLOUTS_FILE, data)
        vocab = RunVocab()
        cols, meta, _ = pack_step(entry["step"], [{k: v for k, v in g.items() if k != "step"} for g in groups], vocab)
        return unpack_step(cols, meta, vocab.table()), step_nbytes(cols, len(data))

    def _parse(self, fname: str, data: bytes) -> list[dict]:
        """Records of complete lines `data`; a bad line is skipped and noted in `bad_lines`."""
        rows = []
        for line in data.split(b"\n")[:-1]:
            self._lines[fname] += 1
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (ValueError, RecursionError) as err:  # RecursionError: absurdly nested JSON
                self._note_bad_line(fname, f"not valid JSON ({type(err).__name__}: {str(err)[:80]})")
                continue
            why = row_problem(fname, row)
            if why:
                self._note_bad_line(fname, why)
                continue
            rows.append(row)
        return rows

    def _note_bad_line(self, fname: str, why: str) -> None:
        self._note_bad(f"{self.run_dir / fname} line {self._lines[fname]}: {why}, skipped")

    def _note_bad(self, message: str) -> None:
        self.bad_line_count += 1
        if len(self.bad_lines) < MAX_BAD_LINES:
            self.bad_lines.append(message)


def _legacy_step(line: bytes) -> int | None:
    """The step of an old rollouts line (written as `{"step": N, ...`), None for a line that is not one."""
    match = _LEGACY_STEP.match(line)
    return int(match.group(1)) if match else None


_LEGACY_STEP = re.compile(rb'\{"step": (\d+),')
