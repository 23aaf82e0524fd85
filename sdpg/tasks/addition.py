"""Addition tasks: the embedded task (`add`) and its sparse-reward sibling (`sparse`).

Design choices:
- Text is compact because the embedded model reads one character per token: the student sees `Q:123+456\n`, the
  teacher additionally sees `Hint: 579 (3+6=9 2+5=7 1+4=5)\n`, the answer and the column sums from the units up
  (carries shown as `+1`), in the spirit of the paper's "the correct answer is ..., a known solution is ..." context.
- The difficulty knob of `add` is `digits` (`data.digits`), the number of digits of each addend (no leading zeros):
  the task owns it (`Task.difficulty`), no caller tests the task's name.
- Train and val are disjoint by construction: the hash of the unordered pair (`split_of`) decides its split once and
  for all, so `a+b` and `b+a` land on the same side and no seed or size can leak a val problem into training.
- Rows are a pure function of `(n, digits, seed, split)`. Distinct pairs are drawn while the split has enough of
  them; a split smaller than `n` (tiny digit counts) is cycled, so repeats only appear when unavoidable.
- `sparse` is 3+3-digit addition with a warm start stopped at the onset of learning: the student answers a few
  percent of problems while the hinted teacher, which only has to copy the answer, is reliable. Most groups of a step
  then have all-zero rewards: the regime where an outcome-only method gets little signal and the teacher's tokens are
  the only dense signal.
"""
from __future__ import annotations

import random
from functools import partial

from sdpg.data import PromptRow
from sdpg.tasks.base import SPLITS, VAL_BUCKETS, Problem, Task, boxed, hint_text, split_of_key

ADD_DIGITS = (3, 2)
SPARSE_DIGITS = (3, 3)
ENUMERATE_LIMIT = 1 << 18
"""digit settings with at most this many pairs are enumerated; larger ones are rejection-sampled"""
DATA_SOURCE = "embedded/add"


def worked_solution(a: int, b: int) -> str:
    """Column sums from the units digit up, e.g. 758+467 -> "8+7=15 5+6+1=12 7+4+1=12"."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, parts = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        parts.append(f"{x}+{y}" + ("+1" if carry else "") + f"={total}")
        carry = total // 10
    return " ".join(parts)


def make_row(a: int, b: int) -> PromptRow:
    """The row for `a+b`: student question, hint with the worked solution, and the gold answer."""
    answer = str(a + b)
    return PromptRow(prompt=f"Q:{a}+{b}\n", context=hint_text(answer, worked_solution(a, b)), answer=answer,
                     data_source=DATA_SOURCE)


def target_text(answer: str) -> str:
    """The response the model learns for a gold answer (the tokenizer's EOS follows it)."""
    return boxed(answer)


def split_of(a: int, b: int) -> str:
    """The split a pair belongs to, fixed by a hash of the unordered pair."""
    lo, hi = sorted((a, b))
    return split_of_key(f"{lo}+{hi}")


def make_rows(n: int, *, digits: tuple[int, int] = ADD_DIGITS, seed: int = 0, split: str = "train") -> list[PromptRow]:
    """`n` addition problems from `split`, deterministic in `(n, digits, seed, split)`."""
    return [make_row(a, b) for a, b in make_pairs(n, digits=digits, seed=seed, split=split)]


def make_pairs(n: int, *, digits: tuple[int, int] = ADD_DIGITS, seed: int = 0, split: str = "train"
               ) -> list[tuple[int, int]]:
    """The addend pairs of `make_rows`, for tasks that format them their own way."""
    _check_args(n, digits, split)
    ranges = [range(10 ** (d - 1) if d > 1 else 0, 10**d) for d in digits]
    rng = random.Random(f"{split}:{digits[0]}+{digits[1]}:{seed}")
    if len(ranges[0]) * len(ranges[1]) <= ENUMERATE_LIMIT:
        return _enumerated_pairs(n, ranges, rng, split)
    return _sampled_pairs(n, ranges, rng, split)


def _check_args(n: int, digits: tuple[int, int], split: str) -> None:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"make_rows: n must be a non-negative int, got {n!r}")
    if len(digits) != 2 or not all(isinstance(d, int) and 1 <= d <= 9 for d in digits):
        raise ValueError(f"make_rows: digits must be two digit counts in 1..9, got {digits!r}")
    if split not in SPLITS:
        raise ValueError(f"make_rows: split must be one of {SPLITS}, got {split!r}")


def _enumerated_pairs(n: int, ranges: list[range], rng: random.Random, split: str) -> list[tuple[int, int]]:
    pool = [(a, b) for a in ranges[0] for b in ranges[1] if split_of(a, b) == split]
    if not pool:
        raise ValueError(f"make_rows: the {split} split of this digit setting holds no problems")
    rng.shuffle(pool)
    return [pool[i % len(pool)] for i in range(n)]


def _sampled_pairs(n: int, ranges: list[range], rng: random.Random, split: str) -> list[tuple[int, int]]:
    # Rejection sampling stays fast only while n is at most half of the split.
    share = 1 if split == "val" else VAL_BUCKETS - 1
    capacity = len(ranges[0]) * len(ranges[1]) * share // (2 * VAL_BUCKETS)
    if n > capacity:
        raise ValueError(f"make_rows: n={n} is too many distinct problems for this digit setting (at most {capacity})")
    seen: set[tuple[int, int]] = set()
    pairs = []
    while len(pairs) < n:
        pair = (rng.choice(ranges[0]), rng.choice(ranges[1]))
        if pair not in seen and split_of(*pair) == split:
            seen.add(pair)
            pairs.append(pair)
    return pairs


def addition_problems(n: int, seed: int, split: str, *, digits: tuple[int, int], source: str) -> list[Problem]:
    out = []
    for a, b in make_pairs(n, digits=digits, seed=seed, split=split):
        answer = str(a + b)
        out.append(Problem(question=f"Q:{a}+{b}\n", answer=answer, solution=worked_solution(a, b),
                           response=boxed(answer), data_source=source))
    return out


def add_task(digits: tuple[int, int] = ADD_DIGITS) -> Task:
    """The embedded addition task at `digits` (data.digits), its difficulty setting."""
    digits = tuple(digits)
    return Task(name="add", description=f"{digits[0]}+{digits[1]}-digit addition, answer in \\boxed{{}}",
                generate=partial(addition_problems, digits=digits, source=DATA_SOURCE),
                response_tokens=len(boxed("9" * (max(digits) + 1))), max_new_tokens=24, difficulty=add_task)


SPARSE = Task(
    name="sparse",
    description="3+3-digit addition from a student at the onset of learning: rare rewards, a reliable hinted teacher",
    generate=partial(addition_problems, digits=SPARSE_DIGITS, source="embedded/sparse"),
    response_tokens=len(boxed("9999")), max_new_tokens=24,
    warm_start={"steps": 1500, "stop_at": 0.05, "check_every": 5},  # 600 steps ended at 0.008, below the target
)
