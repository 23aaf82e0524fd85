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

__all__ = ["ADD_DIGITS", "CONTEXTS", "TASKS", "Problem", "Task", "context_fn", "get_task", "tasks_with_difficulty"]


def get_task(name: str, digits: tuple[int, int] | None = None) -> Task:
    """The task `name`, at difficulty `digits` (`data.digits`) for a task that has that setting (`Task.at`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name].at(digits)


def tasks_with_difficulty() -> list[str]:
    """The tasks whose difficulty `data.digits` sets."""
    return sorted(name for name, task in TASKS.items() if task.difficulty is not None)
