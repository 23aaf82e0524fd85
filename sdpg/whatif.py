"""What-if token weights: the weight each registered method would put on every sampled token of one recorded response.

Legend: T response tokens.

Every method's update on a sampled token is, to first order, a policy gradient `w_t * grad log p(y_t)`; each
registry entry owns its `w_t` (`sdpg.methods.MethodSpec.whatif`, built from the formulas its training loss uses),
computed here from the arrays a rollout record already carries. A record carries the live teacher's log q, so for a
method whose teacher is the frozen reference (OPSD) the weight is exact while the policy still equals the reference
(step 0) and an approximation after. Methods without a what-if weight are left out.
"""
from __future__ import annotations

import numpy
import torch

from sdpg.methods import METHODS


def response_tensors(response: dict) -> dict:
    """A recorded response's per-token arrays as (T,) tensors (lists or numpy arrays alike), with its advantage
    broadcast over the tokens, an all-ones mask, and its verdict."""
    def arr(key: str) -> torch.Tensor:
        return torch.as_tensor(numpy.asarray(response[key], dtype=float), dtype=torch.float32)  # (T,)

    logp = arr("student_logp")  # (T,)
    return {"logp": logp, "old_logp": arr("old_logp") if "old_logp" in response else logp,
            "teacher_logp": arr("teacher_logp"), "kl": arr("kl"),
            "ref_logp": arr("ref_logp") if "ref_logp" in response else None,
            "adv": torch.full_like(logp, float(response["advantage"])), "mask": torch.ones_like(logp),
            "correct": bool(response["correct"])}


def token_weights(response: dict, config: dict) -> dict[str, list[float]]:
    """Per-token weight of every registered method with a what-if weight, in registry order (`config`: the run's
    config dict; its `loss` settings, defaults where absent)."""
    r, loss = response_tensors(response), config.get("loss", {})
    return {name: spec.whatif(r, loss).tolist() for name, spec in METHODS.items() if spec.whatif is not None}
