"""The embedded task: verifiable multi-digit addition with a privileged worked solution.

Design choices:
- Text is compact because the embedded model reads one character per token: the student sees
  `Q:123+456\n`, the teacher additionally sees `Hint: 579 (3+6=9 2+5=7 1+4=5)\n`, the answer and the
  column sums from the units up (carries shown as `+1`), in the spirit of the paper's
  "the correct answer is ..., a known solution is ..." context.
- The model is taught to answer `\\boxed{579}` and stop, so the same math-verify reward that scores a
  real model's `\\boxed{}` answer scores this one.
- The difficulty knob is `digits`, the number of digits of each addend (no leading zeros).
- Train and val are disjoint by construction: a hash of the unordered pair decides its split once and
  for all, so `a+b` and `b+a` land on the same side and no seed or size can leak a val problem
  into training.
- Rows are a pure function of `(n, digits, seed, split)`. Distinct pairs are drawn while the split has
  enough of them; a split smaller than `n` (tiny digit counts) is cycled, so repeats only appear when
  unavoidable.
"""
from __future__ import annotations

import hashlib
import random
import re

from sdpg.data import PromptRow

SPLITS = ("train", "val")
VAL_BUCKETS = 8
"""one pair in VAL_BUCKETS (by hash) belongs to the val split"""
ENUMERATE_LIMIT = 1 << 18
"""digit settings with at most this many pairs are enumerated; larger ones are rejection-sampled"""
DATA_SOURCE = "embedded/add"
HINT_PATTERN = re.compile(r"Hint: (?P<answer>\S+) \((?P<solution>[^()]*)\)\n")
"""a hint line with both the answer and the worked solution"""


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


def hint_text(answer: str = "", solution: str = "") -> str:
    """The teacher's hint line, `Hint: 579 (3+6=9 2+5=7 1+4=5)`; either part may be left out (the playground's variants)."""
    parts = [answer] if answer else []
    if solution:
        parts.append(f"({solution})")
    return "Hint: " + " ".join(parts) + "\n"


def parse_hint(context: str) -> tuple[str, str] | None:
    """(answer, worked solution) of a hint line written by `hint_text` with both parts, else None."""
    match = HINT_PATTERN.fullmatch(context)
    return (match["answer"], match["solution"]) if match else None


def make_row(a: int, b: int) -> PromptRow:
    """The row for `a+b`: student question, hint with the worked solution, and the gold answer."""
    answer = str(a + b)
    return PromptRow(
        prompt=f"Q:{a}+{b}\n",
        context=hint_text(answer, worked_solution(a, b)),
        answer=answer,
        data_source=DATA_SOURCE,
    )


def target_text(answer: str) -> str:
    """The response the model learns for a gold answer (the tokenizer's EOS follows it)."""
    return "\\boxed{" + answer + "}"


def split_of(a: int, b: int) -> str:
    """The split a pair belongs to, fixed by a hash of the unordered pair."""
    lo, hi = sorted((a, b))
    h = int.from_bytes(hashlib.blake2b(f"{lo}+{hi}".encode(), digest_size=8).digest(), "little")
    return "val" if h % VAL_BUCKETS == 0 else "train"


def make_rows(n: int, *, digits: tuple[int, int] = (3, 2), seed: int = 0, split: str = "train") -> list[PromptRow]:
    """`n` addition problems from `split`, deterministic in `(n, digits, seed, split)`."""
    return [make_row(a, b) for a, b in make_pairs(n, digits=digits, seed=seed, split=split)]


def make_pairs(n: int, *, digits: tuple[int, int] = (3, 2), seed: int = 0, split: str = "train"
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
