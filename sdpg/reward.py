"""Verifier reward: math-verify scores boxed answers in worker processes, with a real time limit.

Design choices:
- Checks run in a spawn-context process pool: math-verify's `signal.alarm` works only in a main thread, and
  the trainer scores from a background thread (spawned workers re-import the main module, so a script that
  builds a `MathVerifier` needs the `if __name__ == "__main__":` guard).
- One `setitimer` per answer, not math-verify's whole-second timeouts, which restart per call and could
  let one answer take several times the limit.
- `raise_on_error=True`: a verifier failure is status "error", a timeout "timeout"; both score 0 and are
  counted by `reward_metrics`, never hidden.
- A backstop in the parent kills and rebuilds the pool when a worker is stuck past `timeout_s +
  BACKSTOP_GRACE_S` where its timer cannot reach, or dies; that item scores as a timeout (or error) and
  the others run again.
- One chunk of items per worker per call (per-task overhead would dominate ~2 ms checks), and a parent-side
  memo of (gold, answer) pairs; timeouts are not memoised, as they depend on machine load.
- Both sides are parsed wrapped as `$...$`, which in measurements matched or beat `\\boxed{}` and no wrapping.
- Workers die with their parent: each watches from a daemon thread whether the process that started it is
  still its parent, and exits when it is not (after `kill -9`, an OOM kill); `PR_SET_PDEATHSIG` would fire
  when the *thread* that started the worker ends, and pools are started from short-lived threads.
- Plain-integer answers are decided in-process (what math-verify answers for them); only the rest go to the
  workers, so a step of the embedded task rarely waits on a worker.
"""
from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import re
import signal
import threading
import time
from collections import OrderedDict
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Callable, NamedTuple

BACKSTOP_GRACE_S = 1.0
"""seconds a worker may overrun its own per-answer timer before the parent kills it"""
_STALL_LIMIT_S = 60.0
"""seconds without any progress (no item started or finished) before the pool counts as broken"""
_POLL_S = 0.02
_PARENT_POLL_S = 0.25
"""how often a worker checks that its parent is alive"""
_MEMO_SIZE = 100_000
_DETAIL_CHARS = 300
_BOXED = "\\boxed"
REWARD_VALUES = {"01": (0.0, 1.0), "pm1": (-1.0, 1.0)}
"""verifier reward (wrong, correct) per scale: the paper's 0/1, the authors' fork's -1/+1"""
_PLAIN_INT = re.compile(r"\s*(-?\d{1,15})\s*", re.ASCII)
"""an answer the fast path decides: a plain integer small enough that math-verify compares it exactly"""


@dataclass(frozen=True)
class Verdict:
    """The verifier's judgement of one response."""

    correct: bool
    """the boxed answer matches the gold answer"""
    reward: float
    """the verifier's scale value for correct or wrong (`REWARD_VALUES`; 1.0 or 0.0 by default)"""
    status: str
    """"ok" (checked), "no_answer" (no complete \\boxed{}), "timeout" or "error" (math-verify failed)"""
    extracted: str | None
    """content of the last \\boxed{...}, None when there is none"""
    detail: str = ""
    """the error or timeout message ("" when none)"""


class _Outcome(NamedTuple):
    status: str
    correct: bool
    detail: str


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, or None if absent or its braces never close.

    Only the last occurrence counts, so a response cut off inside its final box gets no answer
    rather than credit for an answer it revised away from. Escaped braces (`\\{`, `\\}`) are content.
    """
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    i = start + len(_BOXED)
    while i < len(text) and text[i].isspace():
        i += 1
    if i >= len(text) or text[i] != "{":
        return None
    depth, j = 0, i
    while j < len(text):
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
        j += 1
    return None


def overlong_penalty(lengths: list[int], max_new_tokens: int, buffer: int, penalty: float) -> list[float]:
    """DAPO's soft overlong penalty (<= 0) per response length in tokens.

    0 up to `max_new_tokens - buffer`, then a linear ramp reaching `-penalty` at `max_new_tokens`
    (and beyond). `buffer == 0` turns it off.
    """
    if max_new_tokens <= 0:
        raise ValueError(f"overlong_penalty: max_new_tokens must be > 0, got {max_new_tokens}")
    if not 0 <= buffer <= max_new_tokens:
        raise ValueError(f"overlong_penalty: buffer must be in [0, max_new_tokens={max_new_tokens}], got {buffer}")
    if buffer == 0:
        return [0.0 for _ in lengths]
    free = max_new_tokens - buffer
    return [-min(max(n - free, 0) / buffer, 1.0) * penalty for n in lengths]


def reward_metrics(verdicts: list[Verdict]) -> dict[str, float]:
    """Batch metrics: mean reward and accuracy (fractions), and counts of non-"ok" statuses."""
    if not verdicts:
        raise ValueError("reward_metrics: got no verdicts")
    n = len(verdicts)
    return {
        "reward/mean": sum(v.reward for v in verdicts) / n,
        "reward/accuracy": sum(v.correct for v in verdicts) / n,
        "reward/no_answer": float(sum(v.status == "no_answer" for v in verdicts)),
        "reward/timeouts": float(sum(v.status == "timeout" for v in verdicts)),
        "reward/errors": float(sum(v.status == "error" for v in verdicts)),
    }


def fast_outcome(answer: str, extracted: str) -> bool | None:
    """The verdict on a clear case without math-verify (both sides plain integers), else None."""
    gold, pred = _PLAIN_INT.fullmatch(answer), _PLAIN_INT.fullmatch(extracted)
    if gold is None or pred is None:
        return None
    return int(gold.group(1)) == int(pred.group(1))


def _fast_outcomes(keys: list[tuple[str, str] | None]) -> dict[tuple[str, str], _Outcome]:
    """Outcomes of the (gold, extracted) keys the fast path decides."""
    out = {}
    for key in filter(None, keys):
        correct = fast_outcome(*key)
        if correct is not None:
            out[key] = _Outcome("ok", correct, "")
    return out


# ---- worker side -------------------------------------------------------------------------------

class _ItemTimeout(BaseException):
    """Raised by the per-item timer; a BaseException so `except Exception` in library code can't eat it."""


_slot = -1
_slot_started = None
_slot_item = None


def _init_worker(started, item, next_slot, parent_pid: int) -> None:
    """Claim a progress slot, start the parent watch, and pay math-verify's import cost once per worker."""
    global _slot, _slot_started, _slot_item
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), name="parent-watch", daemon=True).start()
    with next_slot.get_lock():
        _slot = next_slot.value
        next_slot.value += 1
    _slot_started, _slot_item = started, item
    import math_verify  # noqa: F401  (import cost belongs to worker start, not to the first item)

    # Its only warnings are "timeout disabled" (we time items ourselves) and swallowed errors
    # (we raise them instead).
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _exit_with_parent(parent_pid: int) -> None:
    """End this worker once `parent_pid` is no longer its parent (the parent died and it was re-parented)."""
    while os.getppid() == parent_pid:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _raise_item_timeout(signum, frame):
    raise _ItemTimeout


def _math_verify_check(answer: str, extracted: str) -> _Outcome:
    """Parse both sides as inline math and compare, gold first (math-verify is not symmetric)."""
    from math_verify import parse, verify  # only workers import it: the trainer never loads sympy

    gold = parse(f"${answer}$", parsing_timeout=None, raise_on_error=True)
    pred = parse(f"${extracted}$", parsing_timeout=None, raise_on_error=True)
    correct = verify(gold, pred, timeout_seconds=None, raise_on_error=True)
    return _Outcome("ok", bool(correct), "")


def _check_chunk(chunk: list[tuple[int, str, str]], timeout_s: float,
                 check: Callable[[str, str], _Outcome]) -> list[tuple[int, _Outcome]]:
    """Check (index, gold, extracted) items one by one, each under its own timer."""
    signal.signal(signal.SIGALRM, _raise_item_timeout)
    results = []
    for index, answer, extracted in chunk:
        _slot_item[_slot] = index
        _slot_started[_slot] = time.monotonic()
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                outcome = check(answer, extracted)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _ItemTimeout:
            outcome = _Outcome("timeout", False, f"verifier took longer than {timeout_s:g} s")
        except Exception as e:
            outcome = _Outcome("error", False, f"{type(e).__name__}: {e}"[:_DETAIL_CHARS])
        _slot_started[_slot] = 0.0
        results.append((index, outcome))
    return results


# ---- parent side -------------------------------------------------------------------------------

class _Pool:
    """A spawn-context process pool plus the shared slots its workers report progress in."""

    def __init__(self, workers: int):
        ctx = multiprocessing.get_context("spawn")
        self.started = ctx.Array("d", workers, lock=False)
        self.item = ctx.Array("q", workers, lock=False)
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker,
            initargs=(self.started, self.item, ctx.Value("i", 0), os.getpid()))

    def busy_items(self) -> dict[int, float]:
        """{item index: monotonic start time} for the items workers are checking right now."""
        busy = {}
        for s in range(len(self.started)):
            t0, index, t1 = self.started[s], self.item[s], self.started[s]
            if t0 > 0 and t0 == t1:
                busy[index] = t0
        return busy

    def kill(self) -> None:
        # ProcessPoolExecutor has no public way to stop a running task (3.14 adds kill_workers).
        processes = list(self.executor._processes.values())
        for p in processes:
            p.kill()
        for p in processes:
            p.join(timeout=5)
        self.executor.shutdown(wait=False, cancel_futures=True)


class MathVerifier:
    """Scores responses against gold answers with math-verify; see the module docstring.

    `score` may be called from any thread (calls are serialised). Close it, or use it as a context
    manager, to stop the worker processes.
    """

    _check = staticmethod(_math_verify_check)
    """the per-item check run in the workers (module-level, so it pickles by reference)"""

    def __init__(self, timeout_s: float = 5.0, workers: int = 1, scale: str = "01"):
        if scale not in REWARD_VALUES:
            raise ValueError(f"MathVerifier: scale must be one of {sorted(REWARD_VALUES)}, got {scale!r}")
        if not timeout_s > 0:
            raise ValueError(f"MathVerifier: timeout_s must be > 0, got {timeout_s}")
        if workers < 1:
            raise ValueError(f"MathVerifier: workers must be >= 1, got {workers}")
        self.timeout_s = float(timeout_s)
        self.workers = int(workers)
        self.values = REWARD_VALUES[scale]
        self._pool: _Pool | None = None
        self._memo: OrderedDict[tuple[str, str], _Outcome] = OrderedDict()
        self._lock = threading.Lock()

    def __enter__(self) -> "MathVerifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker processes (a later `score` starts new ones)."""
        with self._lock:
            if self._pool is not None:
                self._pool.executor.shutdown(wait=True, cancel_futures=True)
                self._pool = None

    def score(self, responses: list[str], answers: list[str]) -> list[Verdict]:
        """One Verdict per response, checking the last \\boxed{} answer against the matching gold."""
        if len(responses) != len(answers):
            raise ValueError(f"MathVerifier.score: {len(responses)} responses but {len(answers)} answers")
        extracted = [extract_boxed(r) for r in responses]
        keys = [(str(a), e) if e is not None and e.strip() else None for a, e in zip(answers, extracted)]
        with self._lock:
            # the fast path stands in for math-verify only: a verifier with another check runs it on everything
            known = _fast_outcomes(keys) if self._check is _math_verify_check else {}
            for key in filter(None, keys):
                if key in known:
                    continue
                if key in self._memo:
                    known[key] = self._memo[key]
                    self._memo.move_to_end(key)
            fresh = self._check_all(sorted({k for k in keys if k is not None and k not in known}))
            for key, outcome in fresh.items():
                if outcome.status != "timeout":
                    self._remember(key, outcome)
            known.update(fresh)
        no_answer = _Outcome("no_answer", False, "")
        outcomes = [known[k] if k is not None else no_answer for k in keys]
        return [Verdict(o.correct, self.values[o.correct], o.status, e, o.detail) for o, e in zip(outcomes, extracted)]

    def _remember(self, key: tuple[str, str], outcome: _Outcome) -> None:
        self._memo[key] = outcome
        if len(self._memo) > _MEMO_SIZE:
            self._memo.popitem(last=False)

    def _check_all(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], _Outcome]:
        """Check every key, rebuilding the pool after a stuck or dead worker until all are settled."""
        settled: dict[int, _Outcome] = {}
        pending = list(range(len(keys)))
        while pending:
            if self._pool is None:
                self._pool = _Pool(self.workers)
            items = [(i, *keys[i]) for i in pending]
            done, failed = self._run_round(self._pool, items)
            settled.update(done)
            if failed:
                self._pool.kill()
                self._pool = None
                settled.update(failed)
            pending = [i for i in pending if i not in settled]
        return {keys[i]: o for i, o in settled.items()}

    def _run_round(self, pool: _Pool, items: list[tuple[int, str, str]]
                   ) -> tuple[dict[int, _Outcome], dict[int, _Outcome]]:
        """Run items in one chunk per worker and watch them.

        Returns (finished outcomes, outcomes forced by the parent). A non-empty second dict means
        the pool must be killed; unfinished items that appear in neither dict are to be re-run.
        """
        chunks = [items[w::self.workers] for w in range(min(self.workers, len(items)))]
        futures = {pool.executor.submit(_check_chunk, c, self.timeout_s, self._check) for c in chunks}
        done: dict[int, _Outcome] = {}
        last_progress, last_busy = time.monotonic(), {}
        limit = self.timeout_s + BACKSTOP_GRACE_S
        while futures:
            finished, futures = concurrent.futures.wait(
                futures, timeout=_POLL_S, return_when=concurrent.futures.FIRST_COMPLETED)
            now = time.monotonic()
            busy = pool.busy_items()
            if finished or busy != last_busy:
                last_progress, last_busy = now, busy
            for f in finished:
                try:
                    done.update(f.result())
                except BrokenProcessPool as e:
                    return done, self._blame(busy or dict.fromkeys(i for i, _, _ in items if i not in done),
                                             "error", f"verifier worker died ({e})")
            stuck = {i: t0 for i, t0 in busy.items() if now - t0 > limit}
            if stuck:
                return done, self._blame(stuck, "timeout", f"verifier worker stuck for over {limit:g} s; restarted it")
            if now - last_progress > max(_STALL_LIMIT_S, 2 * limit):
                unfinished = dict.fromkeys(i for i, _, _ in items if i not in done)
                return done, self._blame(unfinished, "error", "verifier workers made no progress; restarted them")
        return done, {}

    @staticmethod
    def _blame(indices, status: str, detail: str) -> dict[int, _Outcome]:
        return {i: _Outcome(status, False, detail) for i in indices}
