"""The `reasoning` task: chained additions and subtractions whose response shows every step.

Design choices:
- `Q:23+45-17+38\\n` is answered `23+45=68 68-17=51 51+38=89 \\boxed{89}`: three steps, each with its
  intermediate result, so responses are 33-43 tokens and a correct final answer can still come with
  token choices the teacher would not make on the way.
- Operands are 2-digit and the running value stays in 0..198 (subtract whenever it reaches 100), so each
  step is within reach of the tiny model and the difficulty comes from chaining them.
- The worked solution in the hint is the response without its box: the `full` and `solution` contexts
  show the teacher every intermediate token, `answer` only the end point.
- The key that decides the split is the question text; problems are drawn by rejection (the space has
  ~10^8 problems, so distinct draws are cheap).
"""
from __future__ import annotations

import random

from sdpg.tasks.base import Problem, Task, boxed, split_of_key

STEPS = 3
"""operations per problem"""
SOURCE = "embedded/reasoning"


def chain_problem(rng: random.Random) -> Problem:
    value = rng.randint(10, 99)
    question, steps = str(value), []
    for _ in range(STEPS):
        b = rng.randint(10, 99)
        subtract = b <= value and (value >= 100 or rng.random() < 0.5)
        result = value - b if subtract else value + b
        op = "-" if subtract else "+"
        question += f"{op}{b}"
        steps.append(f"{value}{op}{b}={result}")
        value = result
    solution = " ".join(steps)
    return Problem(question=f"Q:{question}\n", answer=str(value), solution=solution,
                   response=f"{solution} {boxed(str(value))}", data_source=SOURCE)


def chain_problems(n: int, seed: int, split: str) -> list[Problem]:
    rng = random.Random(f"reasoning:{split}:{seed}")
    seen, out = set(), []
    while len(out) < n:
        problem = chain_problem(rng)
        if problem.question not in seen and split_of_key(problem.question) == split:
            seen.add(problem.question)
            out.append(problem)
    return out


REASONING = Task(
    name="reasoning",
    description=f"{STEPS} chained 2-digit additions/subtractions, every intermediate result written out",
    generate=chain_problems,
    # the longest: a first step to 198, then steps that stay at 3 digits, then the box
    response_tokens=len("99+99=198 ") + (STEPS - 1) * len("198-10=188 ") + len(boxed("178")), max_new_tokens=48,
    warm_contexts=("full", "answer", "solution"),
    # Sequences are ~3x the add task's: half the batch keeps the warm start within minutes of CPU.
    warm_start={"batch_size": 64, "stop_at": 0.3},
)
