"""Addition tasks: today's embedded task (`add`) and its sparse-reward sibling (`sparse`).

Design choices:
- Both reuse `sdpg.task`'s pair generator and hash split, so `add` rows are exactly the rows the
  trainer has always used (same text, same split, same cache key).
- `sparse` is 3+3-digit addition with a warm start stopped at the onset of learning: the student
  answers a few percent of problems while the hinted teacher, which only has to copy the answer, is
  reliable. Most groups of a step then have all-zero rewards: the regime where an outcome-only
  method gets little signal and the teacher's tokens are the only dense signal.
"""
from __future__ import annotations

from functools import partial

from sdpg.task import make_pairs, worked_solution
from sdpg.tasks.base import Problem, Task, boxed

ADD_DIGITS = (3, 2)
SPARSE_DIGITS = (3, 3)


def addition_problems(n: int, seed: int, split: str, *, digits: tuple[int, int], source: str) -> list[Problem]:
    out = []
    for a, b in make_pairs(n, digits=digits, seed=seed, split=split):
        answer = str(a + b)
        out.append(Problem(question=f"Q:{a}+{b}\n", answer=answer, solution=worked_solution(a, b),
                           response=boxed(answer), data_source=source))
    return out


def add_task(digits: tuple[int, int] = ADD_DIGITS) -> Task:
    """The embedded addition task; `digits` (data.digits) is its difficulty knob."""
    return Task(name="add", description=f"{digits[0]}+{digits[1]}-digit addition, answer in \\boxed{{}}",
                generate=partial(addition_problems, digits=tuple(digits), source="embedded/add"),
                response_tokens=len(boxed("9" * (max(digits) + 1))), max_new_tokens=24)


SPARSE = Task(
    name="sparse",
    description="3+3-digit addition from a student at the onset of learning: rare rewards, a reliable hinted teacher",
    generate=partial(addition_problems, digits=SPARSE_DIGITS, source="embedded/sparse"),
    response_tokens=len(boxed("9999")), max_new_tokens=24,
    warm_start={"stop_at": 0.05, "check_every": 5},
)
