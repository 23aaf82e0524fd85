"""The record stream: the only thing the engine shares with the dashboard, notebooks and replays.

Design choices:
- Three kinds of record, all plain JSON-able dicts:
  * metrics  — one flat dict per training step with namespaced keys (`reward/mean`, `kl/distill_mean`,
    `eval/pass@1`, ...) plus `step` and `time` (seconds since the run started). Keys may be absent
    from a row (evaluation runs only every N steps).
  * rollouts — per step, a few whole groups with per-token arrays (see `ROLLOUT_FIELDS`).
  * events   — lifecycle, checkpoints, skipped updates, data and health warnings: one of the names of `EVENTS`
    (the schema: each event's meaning and fields); `emit_event` refuses any other name.
- Every record is appended to a JSON-lines file in the run directory as it is emitted (line-buffered
  and flushed), so a crashed run keeps everything up to the crash, and kept in a bounded in-memory
  buffer for live views. `RecordStream.open(run_dir)` replays a finished or crashed run from disk;
  `refresh()` tails the files, so a view can follow a run written by another process.
- Thread-safe: the training thread writes, UI threads read copies. Any number of viewer threads may
  `refresh()` one stream: reading new bytes and advancing the file offset is one step under a lock, and
  only complete lines are taken (a partial last line waits for the next refresh).
- A bad line (not JSON, not a record, or a row that breaks the schema: `row_problem`, e.g. a metric that is
  not a number) is skipped and reported by file and line in `bad_lines`, so one damaged line does not hide the
  rest of a run and never reaches a view. A config field of the wrong type is left out the same way.
- Files are never truncated in place: `truncate_after` writes the kept part to a temporary sibling,
  fsyncs it and renames it over the original, so a kill mid-rewrite leaves the old file whole.
- A write that fails (read-only folder, full disk) raises `StorageError` naming the file and the cause.
"""
from __future__ import annotations

import errno
import json
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpg.config import config_file_problems
from sdpg.metrics import metrics_row_problem

METRICS_FILE = "metrics.jsonl"
ROLLOUTS_FILE = "rollouts.jsonl"
EVENTS_FILE = "events.jsonl"
CONFIG_FILE = "config.json"
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
    "advantage": "group advantage A_i", "gate": "A_i > 0 (the distillation gate passes)",
    "tokens": "response tokens as text, one per position",
    "student_logp": "log p(y_t) under the student (current policy, sampling temperature)",
    "teacher_logp": "log q(y_t) under the teacher (privileged prompt)",
    "old_logp": "the PPO ratio's old log-prob: the sampling policy's, recomputed by the training model unless "
                "rollout.recompute_old_logp is off",
    "ref_logp": "log-prob under the frozen reference model (absent when alpha = 0 and not needed)",
    "kl": "per-token KL(p_t || q_t) over the full vocabulary", "entropy": "student entropy per token",
    "student_topk": "per position, [[token, prob], ...] top-k of the student",
    "teacher_topk": "per position, [[token, prob], ...] top-k of the teacher",
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


TEXT_HEAD = 300
"""characters of a response's text kept in `RecordStream.group_index`"""


def response_summary(response: dict) -> dict:
    """The scalars of one recorded response and its KL's mean and maximum (None without per-token KL)."""
    kl = [float(x) for x in response.get("kl", ())]
    return {"reward": response.get("reward"), "correct": response.get("correct"), "status": response.get("status"),
            "advantage": response.get("advantage"), "gate": response.get("gate"),
            "length": len(response.get("tokens", ())), "kl_mean": sum(kl) / len(kl) if kl else None,
            "kl_max": max(kl) if kl else None, "text_head": str(response.get("text", ""))[:TEXT_HEAD]}


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
    """Write `text` to `path` atomically: temporary sibling, fsync, rename over the original."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
    """Bounded in-memory record buffers mirrored to append-only JSON-lines files."""

    def __init__(self, run_dir: str | Path | None, *, max_rollout_groups: int = 4000, write: bool = True):
        self.run_dir = Path(run_dir) if run_dir else None
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._metrics: list[dict] = []
        self._rollouts: deque[dict] = deque(maxlen=max_rollout_groups)
        self._events: list[dict] = []
        self._offsets = {METRICS_FILE: 0, ROLLOUTS_FILE: 0, EVENTS_FILE: 0}
        self._lines = dict.fromkeys(self._offsets, 0)
        self.bad_lines: list[str] = []
        """'<file> line <n>: <why>' for each skipped line (the first MAX_BAD_LINES)"""
        self.bad_line_count = 0
        self._config_problems: set[str] = set()
        self._write = write and self.run_dir is not None
        self._t0 = time.time()
        if self._write:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
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
        for g in groups:
            self._append(ROLLOUTS_FILE, self._rollouts, {"step": int(step), **g})

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

    def _load_existing(self) -> None:
        """A resumed run keeps its history: read what is on disk, dropping a half-written last line."""
        for fname, buf in self._buffers():
            path = self.run_dir / fname
            if not path.exists():
                continue
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):
                os.truncate(path, end)  # drops only the torn line; the rest of the file is never rewritten
            buf.extend(self._parse(fname, data[:end]))
            self._offsets[fname] = end

    def truncate_after(self, step: int) -> None:
        """Drop metrics and rollouts newer than `step` (a resumed run redoes those steps); events stay.

        Each file is replaced atomically (see `replace_file`): a kill mid-way leaves the old file whole.
        """
        with self._lock:
            for fname, buf in self._buffers()[:2]:
                kept = [r for r in buf if r["step"] <= step]
                if self._write:
                    text = "".join(json.dumps(r) + "\n" for r in kept)
                    try:
                        replace_file(self.run_dir / fname, text)
                    except OSError as err:
                        raise storage_error("rewrite", self.run_dir / fname, err) from err
                    self._offsets[fname] = len(text.encode())
                buf.clear()
                buf.extend(kept)

    def _buffers(self) -> list[tuple[str, Any]]:
        return [(METRICS_FILE, self._metrics), (ROLLOUTS_FILE, self._rollouts), (EVENTS_FILE, self._events)]

    # ---- reading (any thread) ----
    def metrics(self) -> list[dict]:
        with self._lock:
            return list(self._metrics)

    def rollouts(self, step: int | None = None) -> list[dict]:
        with self._lock:
            rows = list(self._rollouts)
        return rows if step is None else [r for r in rows if r["step"] == step]

    def rollout_steps(self) -> list[int]:
        with self._lock:
            return sorted({r["step"] for r in self._rollouts})

    def group_index(self) -> list[dict]:
        """One cheap dict per recorded group, in record order, without the per-token arrays: step, group, prompt,
        answer, and per response its reward, correct, status, advantage, gate, length (tokens), mean and largest
        per-token KL, and `text_head` (the first `TEXT_HEAD` characters of the text)."""
        with self._lock:
            groups = list(self._rollouts)
        return [{"step": g["step"], "group": g.get("group"), "prompt": g.get("prompt", ""), "answer": g.get("answer", ""),
                 "responses": [response_summary(r) for r in g.get("responses", [])]} for g in groups]

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

    # ---- replay ----
    @classmethod
    def open(cls, run_dir: str | Path) -> "RecordStream":
        """Load a run directory written by a (finished, stopped or crashed) run for browsing."""
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
        stream = cls(run_dir, write=False)
        stream.refresh()
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
            for fname, buf in self._buffers():
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
        return added

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
        self.bad_line_count += 1
        if len(self.bad_lines) < MAX_BAD_LINES:
            self.bad_lines.append(f"{self.run_dir / fname} line {self._lines[fname]}: {why}, skipped")
