"""The embedded task registry: `data.task` names one of `TASKS`.

Each task is a generator of problems with a privileged worked solution, shown to the teacher in one of
the `CONTEXTS` variants, and the same `\\boxed{}` math-verify reward. See docs/tasks.md for what each
task is for and its measured start figures.
"""
from __future__ import annotations

from sdpg.tasks.addition import ADD_DIGITS, SPARSE, add_task
from sdpg.tasks.base import CONTEXTS, Problem, Task, context_fn
from sdpg.tasks.chain import REASONING

TASKS: dict[str, Task] = {"add": add_task(), "sparse": SPARSE, "reasoning": REASONING}

__all__ = ["ADD_DIGITS", "CONTEXTS", "TASKS", "Problem", "Task", "context_fn", "get_task"]


def get_task(name: str, digits: tuple[int, int] | None = None) -> Task:
    """The task `name`; `digits` sets the difficulty of `add` (the other tasks have a fixed one)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    if name == "add" and digits is not None:
        return add_task(tuple(digits))
    return TASKS[name]
