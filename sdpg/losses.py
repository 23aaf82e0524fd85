"""SDPG loss terms as pure tensor functions (no model calls, no I/O, no config objects).

    L_SDPG = L_out + beta * gate * KL(p_student || SG[q_teacher]) + alpha * L_ref

Design choices:
- Every loss function returns a per-token matrix or `(loss, stats)`; stats are plain floats under
  `torch.no_grad()` with namespaced keys (`loss/pg`, `kl/distill_mean`, `gate/fraction`).
- One masked reduction, `masked_mean`, does every average; masked positions are *selected out*
  (`torch.where`), so NaN or inf in padding never leaks into a mean. An all-zero mask is an error.
- The distillation gate and the beta weight multiply the per-token KL *before* aggregation, so the
  normaliser (e.g. all response tokens of the batch for "token-mean") is the same for every term and
  the three terms add up exactly: `loss/total = loss/pg + loss/distill + loss/ref_kl`.
- The KL direction is student-to-teacher, `KL(p || q)`, exact over the whole vocabulary; the teacher
  is always detached; temperature divides the student logits only.
- `kl_clamp` caps the per-token KL where the loss uses it (the authors' fork clamps at 20): a clamped
  token adds a constant and gets no gradient. The KL statistics and records stay unclamped, so they
  measure the same thing whatever the clamp.
- `fused_self_distill` (from `sdpg.fused_kl`) gives the same KL from hidden states without (N, V)
  logits; `sdpg_loss` accepts either its output (`distill_kl`) or logits.
- Sequence-mean aggregations average over sequences that have at least one response token.
- Bad input raises `ValueError` naming the argument and its shape; checks stay O(B T) (full-vocabulary
  logits are checked through their KL, which is non-finite exactly when a logit is).

Shapes: B sequences, G group size, T response tokens, V vocabulary, H hidden size, N tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from sdpg.fused_kl import NonFiniteError, fused_self_distill

__all__ = [
    "ADV_SCALES", "AGG_MODES", "REF_MODES", "NonFiniteError", "aggregate", "beta_schedule", "clipped_pg_loss",
    "gate_passes", "ref_anchor_slope",
    "distill_token_advantage", "fused_self_distill", "group_advantages", "masked_mean",
    "ref_kl_penalty", "sdpg_loss", "self_distill_kl",
]

ADV_SCALES = ("std", "none")
"""group advantage scaling (`group_advantages`, `loss.adv_scale`)"""
AGG_MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum")
"""loss aggregations (`aggregate`, `loss.agg`)"""
REF_MODES = ("urkl", "ufkl", "rkl", "fkl", "k3")
"""reference-anchor estimators (`ref_kl_penalty`, `loss.ref_mode`)"""


# ----------------------------------------------------------------------------- reductions

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is nonzero; normaliser = number of such positions.

    With `dim`, the mean is taken along that dimension and slices without any position give 0.
    """
    if mask.shape != x.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the shape of the values {tuple(x.shape)}")
    keep = mask.bool()  # same shape as x
    count = keep.sum(dim)  # () or reduced shape
    if not bool(keep.any()):
        raise ValueError(f"mask {tuple(mask.shape)} selects no position: nothing to average")
    total = torch.where(keep, x, x.new_zeros(())).sum(dim)  # () or reduced shape
    return total / count.clamp_min(1)


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar.

    token-mean: sum over all response tokens / their number. seq-mean-token-mean: mean over tokens in
    each sequence, then over sequences. seq-mean-token-sum: sum over tokens in each sequence, then mean
    over sequences. Sequence means count sequences with at least one response token.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid: {AGG_MODES}")
    _check_bt(loss_mat=loss_mat, mask=mask)
    if mode == "token-mean":
        return masked_mean(loss_mat, mask)
    has_tokens = mask.bool().any(-1)  # (B,)
    if mode == "seq-mean-token-mean":
        per_seq = masked_mean(loss_mat, mask, dim=-1)  # (B,)
    else:
        per_seq = torch.where(mask.bool(), loss_mat, loss_mat.new_zeros(())).sum(-1)  # (B,)
    return masked_mean(per_seq, has_tokens)


# ----------------------------------------------------------------------------- outcome term

def group_advantages(rewards: torch.Tensor, group_size: int, *, scale: str = "std",
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage per response, rewards laid out group after group: (N,) -> (N,).

    scale="std": (R - mean_G) / (std_G + eps) with the unbiased std (GRPO); scale="none": R - mean_G
    (Dr.GRPO). Groups whose rewards are all equal, and groups of size 1, get exactly 0.
    """
    if scale not in ADV_SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {ADV_SCALES}")
    if rewards.dim() != 1 or rewards.is_complex():
        raise ValueError(f"rewards must be a 1-D real tensor, got {_describe(rewards)}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} entries, not a multiple of group_size={group_size}")
    r = rewards.to(_float_dtype(rewards)).view(-1, group_size)  # (N/G, G)
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"rewards {tuple(rewards.shape)} contains NaN or inf")
    centred = r - r.mean(-1, keepdim=True)  # (N/G, G)
    if scale == "std" and group_size > 1:
        centred = centred / (r.std(-1, keepdim=True) + eps)
    # An all-equal group's mean can be off by rounding; its advantage is 0 by definition.
    flat = r.amax(-1, keepdim=True) == r.amin(-1, keepdim=True)  # (N/G, 1)
    return torch.where(flat, r.new_zeros(()), centred).reshape(-1)  # (N,)


def clipped_pg_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor, *,
                    clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float | None = None,
                    ) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO/DAPO clipped surrogate per token: max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)).

    r = exp(logp - old_logp). With `clip_c`, tokens with A < 0 are capped at -A * clip_c (dual clip).
    `adv` is per sequence (B,) or per token (B, T). Returns the (B, T) loss (values at masked
    positions are meaningless; aggregate with the mask) and clip statistics.
    """
    _check_bt(logp=logp, old_logp=old_logp, mask=mask)
    adv = _adv_per_token(adv, logp.shape)  # (B, T)
    if clip_c is not None and clip_c <= 1:
        raise ValueError(f"clip_c must be > 1 (or None to disable the dual clip), got {clip_c}")
    ratio = torch.exp(logp - old_logp)  # (B, T)
    unclipped = -adv * ratio  # (B, T)
    clipped = -adv * ratio.clamp(1 - clip_low, 1 + clip_high)  # (B, T)
    loss = torch.maximum(unclipped, clipped)  # (B, T)
    if clip_c is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -adv * clip_c), loss)  # (B, T)
    with torch.no_grad():
        stats = {
            "loss/clipfrac_high": _mean(((ratio > 1 + clip_high) & (adv > 0)).float(), mask),
            "loss/clipfrac_low": _mean(((ratio < 1 - clip_low) & (adv < 0)).float(), mask),
            # k1 estimate of KL(pi_old || pi_theta) on tokens sampled from pi_old
            "kl/approx_old": _mean(old_logp - logp, mask),
        }
        if clip_c is not None:
            stats["loss/dual_clipfrac"] = _mean(((ratio > clip_c) & (adv < 0)).float(), mask)
    return loss, stats


# ----------------------------------------------------------------------------- KL terms

def ref_kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-token anchor to the reference model on sampled tokens, log w = logp - ref_logp: (B, T).

    urkl 0.5 (log w)^2 | ufkl exp(-log w) + log w | rkl 0.5 (log w + 1)^2 | fkl exp(-log w) |
    k3 exp(-log w) + log w - 1 (GRPO's estimator of KL(pi_theta || pi_ref)).
    """
    if mode not in REF_MODES:
        raise ValueError(f"unknown reference KL mode {mode!r}; valid: {REF_MODES}")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp {tuple(ref_logp.shape)} must match logp {tuple(logp.shape)}")
    log_w = logp - ref_logp  # (B, T)
    if mode == "urkl":
        return 0.5 * log_w.square()
    if mode == "ufkl":
        return torch.exp(-log_w) + log_w
    if mode == "rkl":
        return 0.5 * (log_w + 1).square()
    if mode == "fkl":
        return torch.exp(-log_w)
    return torch.exp(-log_w) + log_w - 1


def self_distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *,
                    temperature: float = 1.0) -> torch.Tensor:
    """Exact KL(p_student || q_teacher) over the whole vocabulary, per token: (..., V) -> (...).

    p = softmax(student_logits / temperature), q = softmax(teacher_logits), teacher detached.
    Computed in float32 (float64 stays float64) whatever the input dtype.
    """
    for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        if not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"{name} must be a floating-point tensor (..., V), got {_describe(x)}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} must match "
                         f"student_logits {tuple(student_logits.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    dtype = _float_dtype(student_logits)
    log_p = F.log_softmax(student_logits.to(dtype) / temperature, -1)  # (..., V)
    log_q = F.log_softmax(teacher_logits.detach().to(dtype), -1)  # (..., V)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (...,)
    if not bool(torch.isfinite(kl).all()):
        for name, x in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
            if not bool(torch.isfinite(x).all()):
                raise NonFiniteError(f"{name} {tuple(x.shape)} contains NaN or inf")
        raise ValueError("self_distill_kl overflowed on finite logits")
    return kl


def distill_token_advantage(kl: torch.Tensor, logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Prop. 3.1 token advantage at the sampled token: A_dist(y) = KL - log(p(y) / q(y)). (B, T)"""
    if not (kl.shape == logp.shape == teacher_logp.shape):
        raise ValueError(f"kl {tuple(kl.shape)}, logp {tuple(logp.shape)} and teacher_logp "
                         f"{tuple(teacher_logp.shape)} must have one shape")
    return kl - (logp - teacher_logp)


def ref_anchor_slope(log_w: torch.Tensor, mode: str) -> torch.Tensor:
    """d(token anchor loss)/d(log w) of each reference-KL mode, log w = log p(y) - log p_ref(y): (...) -> (...)."""
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


# ----------------------------------------------------------------------------- schedule and total

def beta_schedule(step: int, total_steps: int, beta: float, warmup_steps: int, decay_steps: int) -> float:
    """beta * min(1, k / T_warm) * min(1, (T - k) / T_decay), clamped at 0; a window of 0 is "off"."""
    if warmup_steps < 0 or decay_steps < 0:
        raise ValueError(f"warmup_steps and decay_steps must be >= 0, got {warmup_steps} and {decay_steps}")
    warm = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    decay = min(1.0, (total_steps - step) / decay_steps) if decay_steps else 1.0
    return max(0.0, beta * warm * decay)


def sdpg_loss(*, logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, distill_kl: torch.Tensor | None = None,
              student_logits: torch.Tensor | None = None, teacher_logits: torch.Tensor | None = None,
              temperature: float = 1.0, beta: float = 1e-3, alpha: float = 1e-3, ref_mode: str = "urkl",
              gate: bool | torch.Tensor = True, clip_low: float = 0.2, clip_high: float = 0.2, clip_c: float | None = None,
              agg: str = "token-mean", kl_clamp: float = 0.0, loss_mask: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """L_out + beta * gate * min(KL(p_student || SG[q_teacher]), kl_clamp) + alpha * L_ref, aggregated with `agg`.

    `beta` is the effective (already scheduled) weight. The distillation KL comes from `distill_kl`
    (B, T) or from `student_logits` / `teacher_logits` (B, T, V); exactly one source when beta > 0.
    `gate` True passes sequences with positive advantage (per-token `adv` is averaged per sequence), False every
    sequence; a (B,) bool tensor is the gate's verdict itself (a method's own gate, `sdpg.methods.MethodSpec.gate`).
    `kl_clamp` > 0 caps each token's KL in the loss (a clamped token gets no gradient); 0 = no cap.
    `loss_mask` (B, T), a non-empty subset of `mask`, is what the terms average over when not every response
    token (OPSD-fork's gated tokens); the statistics stay over `mask`.
    """
    _check_bt(logp=logp, old_logp=old_logp, mask=mask)
    if beta < 0 or alpha < 0:
        raise ValueError(f"beta and alpha must be >= 0, got beta={beta}, alpha={alpha}")
    if kl_clamp < 0:
        raise ValueError(f"kl_clamp must be >= 0 (0 = off), got {kl_clamp}")
    if alpha > 0 and ref_logp is None:
        raise ValueError("alpha > 0 needs ref_logp (the reference model's log-probs of the sampled tokens)")
    kl = _distill_kl_source(beta, distill_kl, student_logits, teacher_logits, temperature, logp.shape)
    pg_mat, stats = clipped_pg_loss(logp, old_logp, adv, mask, clip_low=clip_low, clip_high=clip_high, clip_c=clip_c)
    if isinstance(gate, torch.Tensor):
        if gate.shape != mask.shape[:1]:
            raise ValueError(f"gate must be a bool or (B,) = {tuple(mask.shape[:1])}, got {tuple(gate.shape)}")
        passes = gate.bool()  # (B,)
    else:
        passes = gate_passes(adv, mask) if gate else mask.new_ones(mask.shape[0], dtype=torch.bool)  # (B,)
    ref_mat = None
    if ref_logp is not None:
        _check_bt(ref_logp=ref_logp, logp=logp)
        ref_mat = ref_kl_penalty(logp, ref_logp, ref_mode)  # (B, T)
    zero = logp.new_zeros(())
    norm = mask if loss_mask is None else loss_mask  # (B, T)
    if loss_mask is not None:
        _check_bt(loss_mask=loss_mask, mask=mask)
    loss_pg = aggregate(pg_mat, norm, agg)
    kl_loss = kl if kl is None or not kl_clamp else kl.clamp(max=kl_clamp)  # (B, T)
    loss_distill = zero if kl is None else beta * aggregate(kl_loss * passes[:, None], norm, agg)
    loss_ref = zero if ref_mat is None or alpha == 0 else alpha * aggregate(ref_mat, norm, agg)
    loss = loss_pg + loss_distill + loss_ref
    if not bool(torch.isfinite(loss)):
        _raise_non_finite(mask, logp=logp, old_logp=old_logp, adv=_adv_per_token(adv, logp.shape),
                          ref_logp=ref_logp, distill_kl=kl)
    with torch.no_grad():
        stats |= {"loss/total": float(loss), "loss/pg": float(loss_pg), "loss/distill": float(loss_distill),
                  "loss/ref_kl": float(loss_ref), "gate/fraction": float(passes.float().mean()),
                  "beta/effective": float(beta)}
        if kl is not None:
            gated = mask.bool() & passes[:, None]  # (B, T)
            stats["gate/tokens"] = float(gated.sum())
            stats["kl/distill_mean"] = _mean(kl, mask)
            stats["kl/distill_gated_mean"] = _mean(kl, gated) if bool(gated.any()) else 0.0
            stats["kl/clamped_fraction"] = (_mean((kl > kl_clamp).float(), gated) if kl_clamp and bool(gated.any())
                                            else 0.0)
        if ref_mat is not None:
            stats["kl/ref_mean"] = _mean(ref_mat, mask)
    return loss, stats


# ----------------------------------------------------------------------------- helpers

def _distill_kl_source(beta, distill_kl, student_logits, teacher_logits, temperature, shape):
    """The (B, T) distillation KL from whichever source was given, or None."""
    n_logits = (student_logits is not None) + (teacher_logits is not None)
    if n_logits == 1:
        raise ValueError("give both student_logits and teacher_logits, or neither")
    if distill_kl is not None and n_logits:
        raise ValueError("give the distillation KL either as distill_kl or as logits, not both")
    if distill_kl is None and not n_logits:
        if beta > 0:
            raise ValueError("beta > 0 needs distill_kl (B, T) or student_logits and teacher_logits (B, T, V)")
        return None
    if distill_kl is not None:
        if distill_kl.shape != shape or not distill_kl.is_floating_point():
            raise ValueError(f"distill_kl must be a floating-point (B, T) = {tuple(shape)} tensor, "
                             f"got {_describe(distill_kl)}")
        return distill_kl
    if student_logits.shape[:-1] != shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} must be (B, T, V) with (B, T) = {tuple(shape)}")
    return self_distill_kl(student_logits, teacher_logits, temperature=temperature)


def gate_passes(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sequences whose advantage is positive; a per-token advantage is averaged over the response. (B,)"""
    seq_adv = adv if adv.dim() == 1 else masked_mean(adv, mask, dim=-1)  # (B,)
    return seq_adv > 0


def _raise_non_finite(mask: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """The loss is NaN or inf: name the first input with a non-finite value on a response token."""
    keep = mask.bool()  # (B, T)
    for name, x in tensors.items():
        if x is not None and not bool(torch.isfinite(x.detach()[keep]).all()):
            raise NonFiniteError(f"{name} {tuple(x.shape)} contains NaN or inf on response tokens")
    raise NonFiniteError("the SDPG loss is NaN or inf although its inputs are finite on response tokens")


def _adv_per_token(adv: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """(B,) or (B, T) advantages as (B, T)."""
    if not adv.is_floating_point():
        raise ValueError(f"adv must be floating point, got {_describe(adv)}")
    if adv.shape == shape:
        return adv
    if adv.shape == shape[:1]:
        return adv[:, None].expand(shape)
    raise ValueError(f"adv must be (B,) = {tuple(shape[:1])} or (B, T) = {tuple(shape)}, got {tuple(adv.shape)}")


def _check_bt(**tensors: torch.Tensor) -> None:
    """All named tensors share the first one's 2-D (B, T) shape; value tensors are floating point."""
    (first_name, first), *_ = tensors.items()
    if first.dim() != 2:
        raise ValueError(f"{first_name} must be (B, T), got {_describe(first)}")
    for name, x in tensors.items():
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(x).__name__}")
        if x.shape != first.shape:
            raise ValueError(f"{name} {tuple(x.shape)} must match {first_name} {tuple(first.shape)}")
        if name != "mask" and not x.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {_describe(x)}")


def _mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(masked_mean(x.detach(), mask))


def _float_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for integer, bool and low-precision floats; float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
