"""What-if token weights: the weight each method would put on every sampled token of one recorded response.

Legend: T response tokens.

Every method's update on a sampled token is, to first order, a policy gradient `w_t * grad log p(y_t)`;
`w_t` is what this module computes, from the arrays a rollout record already carries:
- GRPO: `w_t = A`.
- SDPG: `w_t = A + beta * gate * A_dist_t - alpha * dL_K/dlog w`, with `A_dist_t = KL_t - (log p - log q)`
  the single-sample Prop. 3.1 advantage of the distillation term (its exact expectation over the
  vocabulary equals the KL gradient) and the anchor's derivative taken at the token's log w.
- RLSD: `w_t = A * ((1 - lam) + lam * clip(exp(sign(A) * (log q - log p_old)), 1 - eps_w, 1 + eps_w))`,
  with lam at its configured starting value (a record does not say how far its decay has gone).
- OPSD (authors' fork reading, `opsd_fork`): `w_t = clamp(log q - log p_old, 0, 20)` on correct responses
  with positive advantage, 0 otherwise. The fork's teacher is the frozen reference with context; a record
  carries the live teacher's log q, so this is exact only while the policy still equals the reference
  (step 0) and an approximation after.
The formulas themselves are `sdpg.methods`'s, the ones the training losses use.
"""
from __future__ import annotations

import torch

from sdpg.losses import distill_token_advantage
from sdpg.methods import opsd_fork_token_weight, rlsd_token_advantage


def ref_anchor_slope(log_w: torch.Tensor, mode: str) -> torch.Tensor:
    """d(token anchor loss)/d(log w) for each reference-KL mode: (T,) -> (T,)."""
    slopes = {
        "urkl": lambda x: x,
        "ufkl": lambda x: 1 - torch.exp(-x),
        "rkl": lambda x: x + 1,
        "fkl": lambda x: -torch.exp(-x),
        "k3": lambda x: 1 - torch.exp(-x),
    }
    if mode not in slopes:
        raise ValueError(f"unknown ref_mode {mode!r}; valid: {sorted(slopes)}")
    return slopes[mode](log_w)


def token_weights(response: dict, config: dict) -> dict[str, list[float]]:
    """Per-token weight of GRPO, SDPG, RLSD and OPSD (fork) for one recorded response (see module docstring)."""
    loss = config.get("loss", {})
    logp = torch.tensor(response["student_logp"])  # (T,)
    old_logp = torch.tensor(response.get("old_logp", response["student_logp"]))  # (T,)
    teacher_logp = torch.tensor(response["teacher_logp"])  # (T,)
    kl = torch.tensor(response["kl"])  # (T,)
    adv = torch.full_like(logp, float(response["advantage"]))  # (T,)
    gate = 1.0 if (response["advantage"] > 0 or not loss.get("gate", True)) else 0.0
    beta, alpha = loss.get("beta", 0.0), loss.get("alpha", 0.0)
    passes = bool(response["correct"]) and response["advantage"] > 0
    sdpg = adv + beta * gate * distill_token_advantage(kl, logp, teacher_logp)  # (T,)
    if alpha and "ref_logp" in response:
        log_w = logp - torch.tensor(response["ref_logp"])  # (T,)
        sdpg = sdpg - alpha * ref_anchor_slope(log_w, loss.get("ref_mode", "urkl"))
    return {
        "grpo": adv.tolist(),
        "sdpg": sdpg.tolist(),
        "rlsd": rlsd_token_advantage(adv, teacher_logp, old_logp, lam=loss.get("rlsd_lambda", 0.5),
                                     eps_w=loss.get("rlsd_eps_w", 0.2)).tolist(),
        "opsd_fork": opsd_fork_token_weight(teacher_logp, old_logp, torch.tensor(passes)).tolist(),
    }
