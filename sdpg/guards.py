"""Guards run after the optimizer step: weights that are no longer finite must never be trained on or saved.

Design choices:
- One fused norm over all parameters is the fast path (a NaN or inf anywhere makes it non-finite); only
  then are tensors checked one by one, to name the first bad one.
- The step is not undone (that would need a copy of every weight each step); the run stops with an error
  instead, before any checkpoint of the bad weights, so the last checkpoint on disk is the last good state.
"""
from __future__ import annotations

import math

import torch


class NonFiniteWeightsError(RuntimeError):
    """An optimizer step produced NaN or inf weights; the message names the step and a bad tensor."""


@torch.no_grad()
def check_finite_weights(model: torch.nn.Module, step: int) -> None:
    """Raise NonFiniteWeightsError when any parameter of `model` holds NaN or inf after training step `step`."""
    params = list(model.parameters())
    norms = torch._foreach_norm([p.detach().float() for p in params])  # one 0-d tensor per parameter
    if math.isfinite(float(torch.stack(norms).sum())):
        return
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if not bad:  # the norm overflowed on huge but finite weights
        return
    raise NonFiniteWeightsError(
        f"step {step}: the optimizer step left NaN/inf weights in {len(bad)} of {len(params)} parameter tensors "
        f"(first: {bad[0]}). The run stops here and these weights are not saved; the last checkpoint is the last "
        f"good state: lower --optim.lr (or --optim.grad_clip) and resume from it")
