"""Stop requests that every long phase honours within seconds: warm start, evaluation, generation, playground.

Design choices:
- A run's stop flag (a `threading.Event`) is put in scope for the thread that does the run's work
  (`stop_scope`); the long loops below it ask `check_stop(where)`, and `generate` calls get a stopping
  criterion (`stop_criteria()`) that ends decoding at the next token. A thread-local scope reaches the warm
  start, the held-out evaluation and the playground without threading a flag through every signature on the
  way, and code run outside any scope (tests, notebooks, the CLI's tools) is never stopped.
- A phase that sees the flag raises `Stopped`, which is not an error: the run handle turns it into its normal
  stop (checkpoint of the last completed step, `stopped` event). Nothing half-done is kept: a rollout cut
  short is thrown away, never trained on.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

_scope = threading.local()


class Stopped(Exception):
    """A long phase ended early because a stop was requested (not an error)."""


@contextmanager
def stop_scope(flag: threading.Event):
    """Within the block, on this thread, `check_stop` and `stop_criteria` follow `flag`."""
    previous = getattr(_scope, "flag", None)
    _scope.flag = flag
    try:
        yield flag
    finally:
        _scope.flag = previous


def stop_requested() -> bool:
    flag = getattr(_scope, "flag", None)
    return flag is not None and flag.is_set()


def check_stop(where: str) -> None:
    """Raise `Stopped` naming `where` when this thread's run has been asked to stop."""
    if stop_requested():
        raise Stopped(f"stop requested during {where}")


class _StopOnRequest(StoppingCriteria):
    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), stop_requested(), dtype=torch.bool, device=input_ids.device)  # (b,)


def stop_criteria(*criteria: StoppingCriteria) -> StoppingCriteriaList:
    """`criteria` plus one that ends `generate` at the next token once a stop is requested (then call
    `check_stop`: the cut-short output must not be used)."""
    return StoppingCriteriaList([*criteria, _StopOnRequest()])
