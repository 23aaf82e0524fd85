"""What an embedded task is: a problem generator, the response it teaches, and named privileged contexts.

Design choices:
- A `Problem` keeps everything a context variant or the warm start may need (answer, worked solution,
  taught response); a `PromptRow` is cut from it for one context variant, so the data path downstream
  of the rows is the same for every task and every variant.
- Context variants are shared by all tasks, so "does the answer alone help as much as the worked
  solution?" is one comparison across tasks. `full` is the hint the trainer has always shown; `none`
  gives the teacher nothing the student lacks (its gap is exactly zero, a control).
- Splits are decided by a hash of a problem's canonical key, never by the seed, so no seed or size can
  move a held-out problem into training.
- Every task answers in `\\boxed{}` and is scored by the same math-verify reward; only the generator,
  the taught response, the warm-start settings and the difficulty setting (`Task.difficulty`) differ.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from sdpg.data import PromptRow

SPLITS = ("train", "val")
VAL_BUCKETS = 8
"""one problem in VAL_BUCKETS (by hash of its key) belongs to the val split"""
HINT_PATTERN = re.compile(r"Hint: (?P<answer>\S+) \((?P<solution>[^()]*)\)\n")
"""a hint line with both the answer and the worked solution"""


@dataclass(frozen=True)
class Problem:
    """One generated problem with its privileged material."""

    question: str
    """the student's text, e.g. "Q:23+45-17\\n" """
    answer: str
    """gold answer for the verifier"""
    solution: str
    """worked solution, e.g. "23+45=68 68-17=51" """
    response: str
    """the response the warm start teaches (ends with `\\boxed{answer}`; EOS follows it)"""
    data_source: str
    """e.g. "embedded/reasoning" """


def hint_text(answer: str = "", solution: str = "") -> str:
    """The teacher's hint line, `Hint: 579 (3+6=9 2+5=7 1+4=5)`; either part may be left out (the context variants)."""
    parts = [answer] if answer else []
    if solution:
        parts.append(f"({solution})")
    return "Hint: " + " ".join(parts) + "\n"


def parse_hint(context: str) -> tuple[str, str] | None:
    """(answer, worked solution) of a hint line written by `hint_text` with both parts, else None."""
    match = HINT_PATTERN.fullmatch(context)
    return (match["answer"], match["solution"]) if match else None


CONTEXTS: dict[str, Callable[[Problem], str]] = {
    "full": lambda p: hint_text(p.answer, p.solution),
    "answer": lambda p: hint_text(p.answer),
    "solution": lambda p: hint_text(solution=p.solution),
    "none": lambda p: "",
}
"""context variant name -> the privileged context the teacher sees after the student's text"""


@dataclass(frozen=True)
class Task:
    """An embedded task: its generator, response budget and warm-start settings."""

    name: str
    """registry name (`data.task`)"""
    description: str
    """one line for people"""
    generate: Callable[[int, int, str], list[Problem]] = field(repr=False)
    """(n, seed, split) -> n problems; a pure function of its arguments, train and val disjoint"""
    response_tokens: int
    """longest taught response in tokens of the embedded model (EOS not counted): the least
    rollout.max_new_tokens that can hold every correct answer"""
    max_new_tokens: int
    """rollout.max_new_tokens its runs use: the longest response plus room to go wrong"""
    warm_contexts: tuple[str, ...] = ("full",)
    """context variants the warm start shows on its hinted examples, in turn"""
    warm_start: dict[str, Any] = field(default_factory=dict, hash=False)
    """WarmStartConfig fields that put this task's student where it should start"""
    difficulty: Callable[[tuple[int, int]], "Task"] | None = field(default=None, repr=False)
    """`data.digits` -> this task at that difficulty; None for a task with a fixed difficulty"""

    def at(self, digits: tuple[int, int] | None) -> "Task":
        """This task at difficulty `digits` (`data.digits`); a fixed-difficulty task, or None, leaves it as it is."""
        return self if digits is None or self.difficulty is None else self.difficulty(tuple(digits))

    def problems(self, n: int, *, seed: int = 0, split: str = "train") -> list[Problem]:
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"task {self.name!r}: n must be a non-negative int, got {n!r}")
        if split not in SPLITS:
            raise ValueError(f"task {self.name!r}: split must be one of {SPLITS}, got {split!r}")
        return self.generate(n, seed, split)

    def rows(self, n: int, *, seed: int = 0, split: str = "train", context: str = "full") -> list[PromptRow]:
        """`n` problems as PromptRows whose privileged context is the `context` variant."""
        hint = context_fn(context)
        return [PromptRow(prompt=p.question, context=hint(p), answer=p.answer, data_source=p.data_source)
                for p in self.problems(n, seed=seed, split=split)]


def context_fn(name: str) -> Callable[[Problem], str]:
    if name not in CONTEXTS:
        raise ValueError(f"unknown context variant {name!r}; known: {sorted(CONTEXTS)}")
    return CONTEXTS[name]


def split_of_key(key: str) -> str:
    """The split a problem belongs to, fixed by a hash of its canonical key."""
    h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return "val" if h % VAL_BUCKETS == 0 else "train"


def boxed(answer: str) -> str:
    return "\\boxed{" + answer + "}"
