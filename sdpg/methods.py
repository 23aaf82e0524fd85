"""Training methods by name: each is a small loss function over the same per-token inputs.

Legend: B sequences, T response tokens.

Design choices:
- The trainer computes the per-token quantities a method declares it needs (`MethodSpec.needs`) and calls
  `spec.loss(inputs, cfg, beta_k)`; adding a method is one function and one registry entry, and the CLI,
  the config check (`check_config`) and the dashboard list whatever is registered.
- `beta_k` is the scheduled distillation weight for this step (`scheduled_beta`, the one place it is computed)
  for methods with `distills=True`, 0 for the others.
- Every loss goes through `sdpg.losses.sdpg_loss` with the terms it does not use switched off (beta = 0,
  alpha = 0, or an all-zero outcome advantage), so every method returns the same metric names
  (`loss/total`, `loss/pg`, `loss/distill`, `loss/ref_kl`, `gate/fraction`, clip fractions) and the same
  input checks. Terms a method does not have report 0.0.
- `kl/distill_mean` is always the KL to the *live* teacher (current weights, privileged prompt), so curves of
  different methods measure the same thing; methods whose loss does not use the live teacher (GRPO, OPSD-fork)
  get `distill_kl = None` (the step runs their teacher on the recorded groups only and reports the KL there).
  OPSD's frozen teacher gets its own key, `kl/ref_teacher_mean`.
- Ablations of SDPG are settings, not methods: `loss.alpha = 0`, `loss.beta = 0`, `loss.gate = False`,
  `loss.beta_warmup = loss.beta_decay = 0` all go through `sdpg`.
- A method's facts are its registry entry: its loss, the inputs it needs (`Input`), its gate (one predicate: the
  step computes it once, the loss reads it and the teacher runs on the rows it passes), its what-if token weight
  (`sdpg.whatif` draws every entry that has one) and its colour. Adding a method is one function and one entry.
- The per-token weights of RLSD and OPSD live here, once, for the losses and the what-if weights alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Callable

import torch

from sdpg.config import LossConfig, TrainConfig
from sdpg.losses import beta_schedule, distill_token_advantage, gate_passes, masked_mean, ref_anchor_slope, sdpg_loss

OPSD_CLAMP = 20.0
"""upper bound of the OPSD fork's token weight (its code clamps log q - log p_old to [0, 20])"""


class Input(str, Enum):
    """The optional per-token inputs a method may ask the trainer for (`MethodSpec.needs`), each a `LossInputs` field
    of that name, with what it is and where it comes from. A member equals its name as a string."""

    def __new__(cls, name: str, meaning: str, privileged: bool, reference: bool):
        member = str.__new__(cls, name)
        member._value_ = name
        member.meaning, member.privileged, member.reference = meaning, privileged, reference
        return member

    REF_LOGP = ("ref_logp", "the frozen reference's log-prob of the sampled tokens on the student prompt (the alpha "
                "anchor; filled only while loss.alpha > 0)", False, True)
    TEACHER_LOGP = ("teacher_logp", "the live teacher's log q of the sampled tokens (privileged prompt, no gradient)",
                    True, False)
    REF_TEACHER_LOGP = ("ref_teacher_logp", "the frozen reference's log-prob of the sampled tokens on the privileged "
                        "prompt (at loss.opsd_teacher_temperature)", True, True)
    REF_DISTILL_KL = ("ref_distill_kl", "KL(student || SG[frozen reference on the privileged prompt]) per token, full "
                      "vocabulary, with gradient to the student", True, True)


@dataclass
class LossInputs:
    """Per-token tensors of one micro-batch; optional ones are None unless the method asked for them."""

    logp: torch.Tensor
    """(B, T) student log-prob of the sampled tokens (gradient flows)"""
    old_logp: torch.Tensor
    """(B, T) log-prob under the sampling policy"""
    adv: torch.Tensor
    """(B,) group advantages"""
    mask: torch.Tensor
    """(B, T) 1 on response tokens"""
    distill_kl: torch.Tensor | None
    """(B, T) KL(p_student || SG[q_teacher]) over the full vocabulary (gradient flows to the student); None for
    methods that neither distill nor read the live teacher (`sdpg.step.needs_live_teacher`)"""
    temperature: float
    """sampling temperature (applied to the student's logits)"""
    correct: torch.Tensor
    """(B,) verifier verdicts"""
    ref_logp: torch.Tensor | None = None
    """(B, T) frozen reference model's log-prob of the sampled tokens (student prompt)"""
    teacher_logp: torch.Tensor | None = None
    """(B, T) live teacher's log q of the sampled tokens (privileged prompt, no gradient, no temperature)"""
    ref_teacher_logp: torch.Tensor | None = None
    """(B, T) frozen reference's log-prob of the sampled tokens on the privileged prompt"""
    ref_distill_kl: torch.Tensor | None = None
    """(B, T) KL(p_student || SG[q_ref]) over the full vocabulary, q_ref the frozen reference on the
    privileged prompt (its own LM head); gradient flows to the student"""
    step: int = 0
    """training steps completed before this one (0 on the first step), for per-step schedules"""
    gate: torch.Tensor | None = None
    """(B,) bool: the responses the method's gate passes (`MethodSpec.gate`, computed once by the step and also used
    to pick the teacher's rows); None when the method has no gate or `loss.gate` is off"""


def positive_advantage(adv: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SDPG's gate: the responses with a positive advantage (a per-token advantage averaged over the response). (B,)"""
    return gate_passes(adv, mask)


@dataclass(frozen=True)
class MethodSpec:
    name: str
    loss: Callable[[LossInputs, LossConfig, float], tuple[torch.Tensor, dict]]
    description: str
    color: str
    """the method's colour wherever methods are drawn side by side (`lab.style.method_color`)"""
    needs: frozenset[Input] = frozenset()
    """optional LossInputs fields the trainer must fill (`Input`)"""
    distills: bool = False
    """whether the method's loss uses the distillation KL (others only monitor it)"""
    outcome: bool = True
    """whether the loss has an outcome (verifier reward) term; without one, beta is its only weight"""
    gate: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """(adv (B,), correct (B,), mask (B, T)) -> (B,) bool: with `loss.gate` on, the responses the live teacher's KL
    counts on. The step computes it once (`LossInputs.gate`): the loss reads it, and the teacher runs on those rows
    (and the recorded ones) only. None: no gate"""
    whatif: Callable[[dict, dict], torch.Tensor] | None = None
    """(a recorded response's arrays as (T,) tensors and scalars, the run's loss settings) -> (T,) the weight the
    method's update puts on each sampled token, to first order (`sdpg.whatif`); None: not drawn"""
    loss_tokens: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    """(mask (B, T), adv (B,), correct (B,)) -> the (B, T) tokens the loss averages over, when not every response
    token; the trainer weights each micro-batch by its share of them"""

    def uses_reference(self, loss: LossConfig) -> bool:
        """Whether this method under `loss` needs the frozen reference model (the alpha anchor or a reference teacher)."""
        return any(need.reference and (need is not Input.REF_LOGP or loss.alpha > 0) for need in self.needs)

    def gated(self, loss: LossConfig) -> bool:
        """Whether the method's gate applies under `loss`."""
        return self.gate is not None and loss.gate

    def check(self, loss: LossConfig) -> None:
        """Raise ValueError, naming the field, for settings under which this method would train nothing."""
        if self.distills and not self.outcome and not loss.beta > 0:
            raise ValueError(f"config loss.beta={loss.beta!r} is invalid: must be > 0 for method {self.name!r}, "
                             f"whose only term is the distillation KL")


# ----------------------------------------------------------------------------- token weights

def rlsd_lambda(step: int, lam: float, decay_steps: int) -> float:
    """RLSD's mixing weight at training step k (counted from 1): lam * max(0, 1 - k / decay_steps); decay_steps = 0
    keeps it constant."""
    if not 0 <= lam <= 1 or decay_steps < 0:
        raise ValueError(f"RLSD needs lam in [0, 1] and decay_steps >= 0, got lam={lam}, decay_steps={decay_steps}")
    return lam * max(0.0, 1.0 - step / decay_steps) if decay_steps else lam


def rlsd_evidence_weight(adv: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """u = exp(sign(A) * SG[log q(y) - log p_old(y)]), before clipping; `adv` broadcasts against the log-probs.

    A token the teacher finds likelier than the sampler gets u > 1 in a good response (pushed up harder)
    and u < 1 in a bad one (pushed down more gently).
    """
    if teacher_logp.shape != old_logp.shape:
        raise ValueError(f"teacher_logp {tuple(teacher_logp.shape)} must match old_logp {tuple(old_logp.shape)}")
    evidence = (teacher_logp - old_logp).detach()  # (B, T) or (T,)
    return torch.exp(torch.sign(adv.detach()) * evidence)  # (B, T) or (T,)


def rlsd_token_advantage(adv: torch.Tensor, teacher_logp: torch.Tensor, old_logp: torch.Tensor, *,
                         lam: float, eps_w: float) -> torch.Tensor:
    """RLSD's token advantage A * ((1 - lam) + lam * clip(u, 1 - eps_w, 1 + eps_w)), u from `rlsd_evidence_weight`.

    `adv` broadcasts against the log-probs ((B, 1) or (B, T) for (B, T) inputs). The factor is positive, so
    the sign of every token's advantage is the response's: the teacher only rescales credit.
    """
    if not 0 <= lam <= 1 or not 0 <= eps_w < 1:
        raise ValueError(f"RLSD needs lam in [0, 1] and eps_w in [0, 1), got lam={lam}, eps_w={eps_w}")
    u = rlsd_evidence_weight(adv, teacher_logp, old_logp)  # (B, T) or (T,)
    return adv * ((1 - lam) + lam * u.clamp(1 - eps_w, 1 + eps_w))  # (B, T) or (T,)


def opsd_fork_passes(adv: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """OPSD (authors' fork) gate per response: positive advantage and, here also, a correct verdict. (B,)"""
    return correct.bool() & (adv > 0)


def opsd_fork_loss_tokens(mask: torch.Tensor, adv: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """The response tokens of gated responses, which OPSD (authors' fork) averages its loss over. (B, T)"""
    return mask * opsd_fork_passes(adv, correct)[:, None].to(mask.dtype)  # (B, T)


def opsd_fork_token_weight(teacher_logp: torch.Tensor, old_logp: torch.Tensor, passes: torch.Tensor) -> torch.Tensor:
    """OPSD (authors' fork): clamp(SG[log q(y) - log p_old(y)], 0, OPSD_CLAMP) where `passes`, else 0.

    `passes` is a bool tensor broadcasting against the log-probs ((B, 1) per response, or a scalar).
    """
    if teacher_logp.shape != old_logp.shape:
        raise ValueError(f"teacher_logp {tuple(teacher_logp.shape)} must match old_logp {tuple(old_logp.shape)}")
    w = (teacher_logp - old_logp).detach().clamp(0.0, OPSD_CLAMP)  # (B, T) or (T,)
    return torch.where(passes, w, torch.zeros_like(w))  # (B, T) or (T,)


# ----------------------------------------------------------------------------- losses

def _common(inputs: LossInputs, cfg: LossConfig) -> dict:
    return dict(logp=inputs.logp, old_logp=inputs.old_logp, adv=inputs.adv, mask=inputs.mask,
                temperature=inputs.temperature, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                clip_c=cfg.clip_c, agg=cfg.agg, kl_clamp=cfg.kl_clamp)


def _need(inputs: LossInputs, field: Input, method: str) -> torch.Tensor:
    value = getattr(inputs, field.value)
    if value is None:
        raise ValueError(f"method {method!r} needs LossInputs.{field.value}, which the trainer did not fill "
                         f"(is Input.{field.name} in the method's `needs`?)")
    return value


def _detached(kl: torch.Tensor | None) -> torch.Tensor | None:
    return None if kl is None else kl.detach()


def sdpg(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """L_out + beta_k * gate * KL(p || SG[q]) + alpha * L_K (the paper's SDPG); the gate is `inputs.gate` (the step's
    `positive_advantage`), or `loss.gate`'s same rule when called without one."""
    return sdpg_loss(**_common(inputs, cfg), ref_logp=inputs.ref_logp, distill_kl=inputs.distill_kl,
                     beta=beta_k, alpha=cfg.alpha, ref_mode=cfg.ref_mode,
                     gate=cfg.gate if inputs.gate is None else inputs.gate)


def grpo(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """GRPO/DAPO: the clipped outcome policy gradient, plus alpha * the chosen reference KL when alpha > 0.
    A distillation KL, when given, is passed with weight 0: it is monitored, never trained on."""
    return sdpg_loss(**_common(inputs, cfg), ref_logp=inputs.ref_logp, distill_kl=_detached(inputs.distill_kl),
                     beta=0.0, alpha=cfg.alpha, ref_mode=cfg.ref_mode, gate=cfg.gate)


def rlsd(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """RLSD (arXiv 2604.03128): the clipped surrogate with the token advantage of `rlsd_token_advantage`.

    Teacher: the live model on the privileged prompt (`teacher_logp`); lam decays as in `rlsd_lambda` with the
    training step counted from 1 (`inputs.step + 1`), as the authors' fork decays it from verl's `global_steps`
    and as the beta schedule and the LR warmup count. No KL term and no reference anchor; the distillation KL is
    only monitored.
    """
    teacher_logp = _need(inputs, Input.TEACHER_LOGP, "rlsd")
    lam = rlsd_lambda(inputs.step + 1, cfg.rlsd_lambda, cfg.rlsd_lambda_decay_steps)
    adv = rlsd_token_advantage(inputs.adv[:, None], teacher_logp, inputs.old_logp, lam=lam, eps_w=cfg.rlsd_eps_w)  # (B, T)
    loss, stats = sdpg_loss(**(_common(inputs, cfg) | {"adv": adv}), distill_kl=inputs.distill_kl.detach(),
                            beta=0.0, alpha=0.0, gate=cfg.gate)
    with torch.no_grad():
        u = rlsd_evidence_weight(inputs.adv[:, None], teacher_logp, inputs.old_logp)  # (B, T)
        eps = cfg.rlsd_eps_w
        stats |= {"rlsd/lambda": lam,
                  "rlsd/weight_mean": float(masked_mean(u.clamp(1 - eps, 1 + eps), inputs.mask)),
                  "rlsd/weight_clipfrac": float(masked_mean(((u < 1 - eps) | (u > 1 + eps)).float(), inputs.mask))}
    return loss, stats


def opsd_fork(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """OPSD as the SDPG authors' fork runs it: a PPO ratio-clipped surrogate whose token advantage is
    `opsd_fork_token_weight`, with the frozen reference on the privileged prompt as teacher.

    As in the fork there is no outcome term and no KL loss: the reward only opens the gate. The fork gates on
    GRPO advantage > 0 (with 0/1 rewards: correct, in a group that is not all correct); we also require the
    verifier's verdict, so a reward-shaping term (the overlong penalty) can never open the gate for a wrong
    answer. The loss averages over the gated tokens only (`loss_tokens`), as the fork's default (legacy FSDP
    worker) path does; the trainer makes that the batch's gated tokens, whatever the micro-batch size.
    The teacher's log-probs carry `loss.opsd_teacher_temperature`. Difference from the fork: its script adds an
    entropy bonus (coefficient 0.02), which this engine has no term for.
    """
    teacher_logp = _need(inputs, Input.REF_TEACHER_LOGP, "opsd_fork")
    passes = opsd_fork_passes(inputs.adv, inputs.correct)  # (B,)
    weight = opsd_fork_token_weight(teacher_logp, inputs.old_logp, passes[:, None])  # (B, T)
    gated = opsd_fork_loss_tokens(inputs.mask, inputs.adv, inputs.correct)  # (B, T)
    any_gated = bool(gated.any())
    # without a gated token every weight is 0, so the all-token loss is an exact 0 that still backpropagates
    loss, stats = sdpg_loss(**(_common(inputs, cfg) | {"adv": weight}), distill_kl=_detached(inputs.distill_kl),
                            beta=0.0, alpha=0.0, gate=False, loss_mask=gated if any_gated else None)
    with torch.no_grad():
        # gate/tokens is what opsd/weight_mean averages over, live teacher or not
        stats |= {"gate/fraction": float(passes.float().mean()), "gate/tokens": float(gated.sum()),
                  "opsd/weight_mean": float(masked_mean(weight, gated)) if any_gated else 0.0}
        if inputs.distill_kl is not None:
            stats["kl/distill_gated_mean"] = float(masked_mean(inputs.distill_kl, gated)) if any_gated else 0.0
    return loss, stats


def opsd(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """OPSD as its paper runs it (arXiv 2601.18734): a pure full-vocabulary divergence from the student to the
    privileged teacher on the student's own samples, no reward: beta_k * KL(p || SG[q_ref]).

    Teacher: the frozen initial policy on the privileged prompt (the paper's recommended `fixed_teacher`), its
    logits divided by `loss.opsd_teacher_temperature` (the paper divides both logits by the sampling temperature:
    set it to `rollout.temperature` for that; the default 1.0 divides only the student's, as in SDPG).
    Deviation: the paper's default divergence is the generalised Jensen-Shannon divergence with mixture weight
    0.5; this engine's fused kernel computes the student-to-teacher KL, which is that family's reverse-KL end
    (mixture weight 1). The paper's loss has no coefficient; beta scales it (with one term and Adam, beta acts
    only through gradient clipping) so that the beta schedule applies as for the other distilling methods.
    """
    ref_kl = _need(inputs, Input.REF_DISTILL_KL, "opsd")
    loss, stats = sdpg_loss(**(_common(inputs, cfg) | {"adv": torch.zeros_like(inputs.adv)}), distill_kl=ref_kl,
                            beta=beta_k, alpha=0.0, gate=False)
    with torch.no_grad():
        live = float(masked_mean(inputs.distill_kl.detach(), inputs.mask))
        stats |= {"kl/ref_teacher_mean": stats["kl/distill_mean"], "kl/distill_mean": live,
                  "kl/distill_gated_mean": live}
    return loss, stats


def self_distill(inputs: LossInputs, cfg: LossConfig, beta_k: float):
    """Pure on-policy self-distillation (OPCD-like): beta_k * KL(p || SG[q]) on every response, q the live
    teacher. No outcome term and no gate, so rewards and advantages do not enter the loss at all."""
    return sdpg_loss(**(_common(inputs, cfg) | {"adv": torch.zeros_like(inputs.adv)}), distill_kl=inputs.distill_kl,
                     beta=beta_k, alpha=0.0, gate=False)


# ----------------------------------------------------------------------------- what-if token weights

def _gate_verdict(spec_gate, r: dict) -> bool:
    """A gate's verdict on one recorded response (`r` as `sdpg.whatif.response_tensors` makes it)."""
    return bool(spec_gate(r["adv"][:1], torch.tensor([r["correct"]]), r["mask"][None])[0])


def _distill_weight(r: dict, loss: dict) -> torch.Tensor:
    """beta * A_dist_t: the distillation term's single-sample policy-gradient weight (Prop. 3.1). (T,)"""
    return loss.get("beta", 0.0) * distill_token_advantage(r["kl"], r["logp"], r["teacher_logp"])


def grpo_weight(r: dict, loss: dict) -> torch.Tensor:
    """GRPO: w_t = A. (T,)"""
    return r["adv"]


def sdpg_weight(r: dict, loss: dict) -> torch.Tensor:
    """SDPG: w_t = A + beta * gate * A_dist_t - alpha * dL_K/dlog w (the anchor's slope at the token's log w). (T,)"""
    gate = not loss.get("gate", True) or _gate_verdict(positive_advantage, r)
    w = r["adv"] + gate * _distill_weight(r, loss)  # (T,)
    alpha = loss.get("alpha", 0.0)
    if alpha and r.get("ref_logp") is not None:
        w = w - alpha * ref_anchor_slope(r["logp"] - r["ref_logp"], loss.get("ref_mode", "urkl"))  # (T,)
    return w


def rlsd_weight(r: dict, loss: dict) -> torch.Tensor:
    """RLSD: its token advantage, lam at its configured start (a record does not say how far the decay went). (T,)"""
    return rlsd_token_advantage(r["adv"], r["teacher_logp"], r["old_logp"], lam=loss.get("rlsd_lambda", 0.5),
                                eps_w=loss.get("rlsd_eps_w", 0.2))


def opsd_fork_weight(r: dict, loss: dict) -> torch.Tensor:
    """OPSD (fork): its token weight on correct responses with positive advantage, with the record's live teacher
    standing in for the frozen one (exact while the policy equals the reference). (T,)"""
    passes = torch.tensor(bool(r["correct"]) and float(r["adv"][0]) > 0)
    return opsd_fork_token_weight(r["teacher_logp"], r["old_logp"], passes)


def distill_weight(r: dict, loss: dict) -> torch.Tensor:
    """Pure distillation (OPSD paper, self-distillation): w_t = beta * A_dist_t on every response, no outcome term;
    for OPSD the record's live teacher stands in for the frozen one (exact while the policy equals the reference). (T,)"""
    return _distill_weight(r, loss)


METHODS: dict[str, MethodSpec] = {
    "sdpg": MethodSpec("sdpg", sdpg, "outcome PG + gated full-vocabulary self-distillation KL + reference anchor",
                       "#8e44ad", needs=frozenset({Input.REF_LOGP}), distills=True, gate=positive_advantage,
                       whatif=sdpg_weight),
    "grpo": MethodSpec("grpo", grpo, "outcome PG only (DAPO clip), optional reference KL", "#495057",
                       needs=frozenset({Input.REF_LOGP}), whatif=grpo_weight),
    "rlsd": MethodSpec("rlsd", rlsd, "outcome PG with token credit rescaled by the live teacher's evidence (RLSD)",
                       "#2f6fdf", needs=frozenset({Input.TEACHER_LOGP}), whatif=rlsd_weight),
    "opsd_fork": MethodSpec("opsd_fork", opsd_fork,
                            "clipped PG on correct answers, token weight = frozen teacher's log-ratio (OPSD, SDPG fork)",
                            "#c2410c", needs=frozenset({Input.REF_TEACHER_LOGP}), outcome=False,
                            loss_tokens=opsd_fork_loss_tokens, whatif=opsd_fork_weight),
    "opsd": MethodSpec("opsd", opsd, "full-vocabulary KL to the frozen privileged teacher, no reward (OPSD paper)",
                       "#f08c2e", needs=frozenset({Input.REF_DISTILL_KL}), distills=True, outcome=False,
                       whatif=distill_weight),
    "self_distill": MethodSpec("self_distill", self_distill,
                               "full-vocabulary KL to the live privileged teacher on every response, no reward",
                               "#0f766e", distills=True, outcome=False, whatif=distill_weight),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {sorted(METHODS)}")
    return METHODS[name]


def scheduled_beta(cfg: TrainConfig, step: int) -> float:
    """The distillation weight of the training step after `step` completed ones (steps count from 1, so the
    schedule sees step + 1); 0 for methods that do not distil. Both trainers and the playground use this one."""
    lc = cfg.loss
    if not get_method(lc.method).distills:
        return 0.0
    return beta_schedule(step + 1, cfg.run.steps, lc.beta, lc.beta_warmup, lc.beta_decay)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Every check a run needs before it starts: the fields (`TrainConfig.validate`), then what only the registry
    knows (a registered method, settings it can train with). ValueError names the first bad field; returns cfg."""
    cfg.validate()
    if cfg.loss.method not in METHODS:
        raise ValueError(f"config loss.method={cfg.loss.method!r} is invalid: must be one of {sorted(METHODS)}")
    METHODS[cfg.loss.method].check(cfg.loss)
    return cfg
