"""One micro-batch of a training step, the reduction of its statistics and the rollout metrics, shared by the engine
(`sdpg.trainer`) and the TRL-based trainer (`sdpg.scale.trainer`), so the two cannot drift.

Legend: b sequences in a micro-batch, P / P' student / teacher prompt tokens (left-padded), T response tokens,
H hidden size, N response tokens kept, r recorded rows.

Design choices:
- `micro_step` runs the teacher (no gradient), the student and the fused KL on one micro-batch and returns the
  method's loss with its statistics; the caller scales and back-propagates it (the engine itself, TRL through its
  own loop). Models are reached through a `Forwards` object, so the step does not care whether the forward is a
  bare model under autocast or a DDP / DeepSpeed wrapper.
- The teacher runs only where it is used (`teacher_rows`): on every row for methods whose loss uses it there
  (`needs_live_teacher`); for a method with a gate (`MethodSpec.gate`, SDPG's positive advantage) under `loss.gate`,
  on the rows it passes (the KL reaches the loss nowhere else: the loss reads the same verdict) and the recorded
  ones; for the others (GRPO, OPSD-fork) on the recorded rows alone, so the views still get
  per-token KL and top-k. A row without the teacher has the student stand in for it: KL 0, no gradient, and
  gated out of the loss anyway.
- Old log-probs of `None` mean "the current policy's": the first update of a step, whose weights are those the old
  log-probs were taken from, uses its own log-probs detached, so its ratio is exactly 1 (verl's on-policy path).
- `reduce_stats` combines micro-batch statistics by the rule `sdpg.metrics` registers for each key; across
  processes the caller sums the numerators and denominators it returns before dividing.
- Per-token records are built by the caller from `MicroResult.records` (`sdpg.record_build.token_records`).
- Around the micro-step, everything else of a step that both trainers do is here too, once: the scheduled beta
  (`step_context`), the learning-rate warmup, the update and micro-batch plan, scoring with the overlong penalty
  (`score`), the reduction over micro-batches, updates and processes (`reduce_step`, the all-reduce passed in as a
  function), the non-finite-update rule (`skip_reason`) and the metrics row (`step_metrics`: one builder, so both
  paths write the same keys).
"""
from __future__ import annotations

import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np
import torch

from sdpg.config import TrainConfig
from sdpg.forward import logits_self_distill, token_logp
from sdpg.losses import fused_self_distill
from sdpg.methods import Input, LossInputs, MethodSpec, positive_advantage, scheduled_beta
from sdpg.metrics import LIVE_TEACHER_KEYS, metric
from sdpg.reward import overlong_penalty, reward_metrics


def needs_live_teacher(method: MethodSpec) -> bool:
    """Whether the method's loss uses the live teacher (its KL or its log-probs) on every response."""
    return method.distills or Input.TEACHER_LOGP in method.needs


def teacher_gated(method: MethodSpec, loss) -> bool:
    """Whether the live teacher reaches `method`'s loss (under `loss`, a LossConfig) only on the responses its gate
    passes (`MethodSpec.gate`)."""
    return needs_live_teacher(method) and method.gated(loss)


class Forwards(Protocol):
    """What a micro-step needs of the models."""

    weight: torch.Tensor
    """(V, H) the training model's LM head"""

    def hidden(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """The training model's final hidden states predicting each response token: (b, T, H)."""

    def reference_hidden(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        """The frozen reference's, for a frozen-reference teacher: (b, T, H)."""


@dataclass(frozen=True)
class StepContext:
    """What every micro-batch of one training step shares."""

    cfg: TrainConfig
    method: MethodSpec
    beta_k: float
    """scheduled distillation weight of the step (0 for methods that do not distill)"""
    step: int
    """training steps completed before this one"""
    reference_weight: torch.Tensor | None = None
    """(V, H) the frozen reference's LM head, for methods that need `ref_distill_kl`"""


def step_context(cfg: TrainConfig, method: MethodSpec, step: int,
                 reference_weight: torch.Tensor | None = None) -> StepContext:
    """The context of the training step after `step` completed ones, with its scheduled beta."""
    return StepContext(cfg, method, scheduled_beta(cfg, step), step, reference_weight)


def lr_warmup(step: int, warmup_steps: int) -> float:
    """Learning-rate factor after `step` training steps: min(1, step / warmup_steps), verl's constant schedule with
    warmup (training step k, counted from 1, runs at (k - 1) / warmup_steps: the first at rate 0)."""
    return min(1.0, step / warmup_steps) if warmup_steps else 1.0


def update_plan(n_rows: int, group_size: int, mini_batch_prompts: int, epochs: int) -> list[slice]:
    """The rows of each optimizer update of a step, in order: whole-group mini-batches of `mini_batch_prompts`
    groups (0: the whole batch), `epochs` times over."""
    per = (mini_batch_prompts or n_rows // group_size) * group_size
    return [slice(lo, min(n_rows, lo + per)) for lo in range(0, n_rows, per)] * epochs


def micro_slices(rows: slice, per: int) -> list[slice]:
    """The rows of each forward/backward pass within `rows`, `per` sequences at most."""
    return [slice(lo, min(rows.stop, lo + per)) for lo in range(rows.start, rows.stop, per)]


@dataclass(frozen=True)
class Scores:
    """The verifier's verdicts on a batch of responses and their rewards."""

    verdicts: list
    rewards: torch.Tensor
    """(B,) verifier reward plus the overlong penalty"""
    seconds: float
    """time in the verifier"""


def score(verifier, texts: list[str], answers: list[str], lengths: list[int], cfg: TrainConfig) -> Scores:
    """Verify `texts` against `answers`; rewards add DAPO's overlong penalty for responses of `lengths` tokens."""
    t0 = time.perf_counter()
    verdicts = verifier.score(texts, answers)
    seconds = time.perf_counter() - t0
    rewards = torch.tensor([v.reward for v in verdicts], dtype=torch.float32)  # (B,)
    rc = cfg.reward
    if rc.overlong_buffer:
        rewards += torch.tensor(overlong_penalty(lengths, cfg.rollout.max_new_tokens, rc.overlong_buffer,
                                                 rc.overlong_penalty))  # (B,)
    return Scores(verdicts, rewards, seconds)


@dataclass(frozen=True)
class MicroBatch:
    prompt_ids: torch.Tensor
    """(b, P) student prompts"""
    prompt_mask: torch.Tensor
    """(b, P)"""
    teacher_ids: torch.Tensor
    """(b, P') privileged prompts"""
    teacher_mask: torch.Tensor
    """(b, P')"""
    response_ids: torch.Tensor
    """(b, T)"""
    response_mask: torch.Tensor
    """(b, T)"""
    adv: torch.Tensor
    """(b,) group advantages"""
    correct: torch.Tensor
    """(b,) verifier verdicts"""
    old_logp: torch.Tensor | None
    """(b, T) the PPO ratio's old log-probs; None = the current policy's (the step's first update)"""
    refs: dict = field(default_factory=dict)
    """the frozen reference's LossInputs fields the method needs (`Input` names: ref_logp, ref_teacher_logp), (b, T)
    each"""
    record_rows: tuple[int, ...] = ()
    """rows whose per-token arrays go to the rollout records"""


@dataclass(frozen=True)
class MicroResult:
    loss: torch.Tensor
    """the method's loss on this micro-batch (unscaled, with gradient)"""
    stats: dict[str, float]
    logp: torch.Tensor
    """(b, T) the student's log-probs of the sampled tokens, detached (the old log-probs of a first update)"""
    records: dict[int, dict] = field(default_factory=dict)
    """row -> `token_record` arguments (tensors cut to the response length)"""
    teacher_s: float = 0.0
    """seconds in teacher and frozen-teacher forwards"""


def micro_step(fw: Forwards, mb: MicroBatch, ctx: StepContext) -> MicroResult:
    """Teacher and student forwards, the fused KL / log-prob / entropy, and the method's loss on one micro-batch."""
    live, needs, temp = needs_live_teacher(ctx.method), ctx.method.needs, ctx.cfg.rollout.temperature
    resp, mask = mb.response_ids, mb.response_mask.float()  # (b, T)
    sel = mb.response_mask.bool()  # (b, T)
    gate = gate_verdict(mb, ctx)  # (b,) or None
    rows = teacher_rows(mb, ctx)
    t0 = time.perf_counter()
    teacher_h = _teacher_hidden(fw, mb, rows)  # (r, T, H)
    t1 = time.perf_counter()
    student_h = fw.hidden(mb.prompt_ids, mb.prompt_mask, resp, mb.response_mask)  # (b, T, H)
    distill = fused_self_distill if ctx.cfg.loss.fused_kl else logits_self_distill
    # where the teacher did not run the student stands in for it: log-prob and entropy are the student's alone
    partner = student_h.detach()  # (b, T, H)
    if live and rows:
        partner = teacher_h if len(rows) == resp.shape[0] else partner.index_copy(
            0, torch.tensor(rows, device=resp.device), teacher_h.to(partner.dtype))
    kl, logp, ent = distill(student_h[sel], partner[sel], fw.weight, resp[sel], temperature=temp)  # (N,)
    logp_mat = torch.zeros_like(mask).masked_scatter(sel, logp)  # (b, T)
    kl_mat = torch.zeros_like(mask).masked_scatter(sel, kl) if live else None  # (b, T)
    refs = dict(mb.refs)
    t2 = time.perf_counter()
    if Input.REF_DISTILL_KL in needs:
        refs[Input.REF_DISTILL_KL.value] = _ref_distill_kl(fw, mb, student_h, ctx)  # (b, T)
    teacher_s = (t1 - t0) + (time.perf_counter() - t2)
    old_logp = logp_mat.detach() if mb.old_logp is None else mb.old_logp  # (b, T)
    inputs = LossInputs(logp=logp_mat, old_logp=old_logp, adv=mb.adv, mask=mask, distill_kl=kl_mat, temperature=temp,
                        correct=mb.correct, step=ctx.step, gate=gate, **refs,
                        teacher_logp=token_logp(teacher_h, fw.weight, resp) * mask  # (b, T)
                        if Input.TEACHER_LOGP in needs else None)
    loss, stats = ctx.method.loss(inputs, ctx.cfg.loss, ctx.beta_k)
    stats["entropy/mean"] = float(ent.detach().mean())
    ent_mat = torch.zeros_like(mask).masked_scatter(sel, ent.detach())  # (b, T)
    records = _record_args(mb, ctx, student_h.detach(), teacher_h, rows,
                           {"kl": kl_mat, "logp": logp_mat.detach(), "entropy": ent_mat, "old_logp": old_logp,
                            "ref_logp": refs.get(Input.REF_LOGP.value)}, fw)
    return MicroResult(loss, stats, logp_mat.detach(), records, teacher_s)


def record_gates(method: MethodSpec, loss, adv: list[float], correct: list[bool]) -> list[bool]:
    """Per response (sequence advantages and verdicts, one each), the gate the records show: the method's own gate
    (`MethodSpec.gate`) under `loss`, every response when the method's gate is switched off (the teacher's KL counts
    on all), and SDPG's positive advantage for a method without a gate (what SDPG's gate would pass)."""
    if method.gate is not None and not loss.gate:
        return [True] * len(adv)
    gate = method.gate if method.gate is not None else positive_advantage
    a = torch.tensor(adv, dtype=torch.float32)  # (B,)
    return gate(a, torch.tensor(correct), torch.ones_like(a)[:, None]).tolist()


def gate_verdict(mb: MicroBatch, ctx: StepContext) -> torch.Tensor | None:
    """(b,) bool: the responses the method's gate passes (`MethodSpec.gate`), the verdict both the loss
    (`LossInputs.gate`) and the teacher's rows read; None when the method has no gate or `loss.gate` is off."""
    if not ctx.method.gated(ctx.cfg.loss):
        return None
    return ctx.method.gate(mb.adv, mb.correct, mb.response_mask).bool()  # (b,)


def teacher_rows(mb: MicroBatch, ctx: StepContext) -> list[int]:
    """The micro-batch rows the live teacher runs on: every row when the method's loss uses it on every response,
    the rows its gate passes (`gate_verdict`, as the loss reads it) and the recorded rows when it reaches the loss
    only through the gate (`teacher_gated`), else the recorded rows (for the views)."""
    if not needs_live_teacher(ctx.method):
        return list(mb.record_rows)
    if not teacher_gated(ctx.method, ctx.cfg.loss):
        return list(range(mb.response_ids.shape[0]))
    gated = torch.nonzero(gate_verdict(mb, ctx)).flatten().tolist()
    return sorted(set(gated) | set(mb.record_rows))


@torch.no_grad()
def _teacher_hidden(fw: Forwards, mb: MicroBatch, rows: list[int]) -> torch.Tensor | None:
    """The live teacher's hidden states on `rows` of the micro-batch (all of them, or the recorded ones)."""
    if not rows:
        return None
    if len(rows) == mb.response_ids.shape[0]:
        return fw.hidden(mb.teacher_ids, mb.teacher_mask, mb.response_ids, mb.response_mask)  # (b, T, H)
    idx = torch.tensor(rows, device=mb.response_ids.device)  # (r,)
    ids, mask = mb.teacher_ids[idx], mb.teacher_mask[idx]  # (r, P')
    return fw.hidden(ids, mask, mb.response_ids[idx], mb.response_mask[idx])  # (r, T, H)


def _ref_distill_kl(fw: Forwards, mb: MicroBatch, student_h: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """KL(p_student || SG[q_ref]) per token, q_ref the frozen reference on the privileged prompt: (b, T)."""
    sel = mb.response_mask.bool()  # (b, T)
    with torch.no_grad():
        ref_h = fw.reference_hidden(mb.teacher_ids, mb.teacher_mask, mb.response_ids, mb.response_mask)  # (b, T, H)
    tau = ctx.cfg.loss.opsd_teacher_temperature
    if tau != 1.0:  # the head has no bias, so dividing the hidden state divides the teacher's logits
        ref_h = ref_h.float() / tau  # (b, T, H)
    distill = fused_self_distill if ctx.cfg.loss.fused_kl else logits_self_distill
    kl, _, _ = distill(student_h[sel], ref_h[sel], fw.weight, mb.response_ids[sel],
                       temperature=ctx.cfg.rollout.temperature, teacher_weight=ctx.reference_weight)  # (N,)
    return torch.zeros(sel.shape, device=kl.device).masked_scatter(sel, kl)  # (b, T)


@torch.no_grad()
def _record_args(mb: MicroBatch, ctx: StepContext, student_h, teacher_h, teacher_rows: list[int], mats: dict,
                 fw: Forwards) -> dict[int, dict]:
    """`token_record` arguments for the recorded rows; without a live teacher in the loss, their KL is computed here."""
    out = {}
    for j in mb.record_rows:
        n = int(mb.response_mask[j].sum())
        t_h = teacher_h[teacher_rows.index(j), :n]  # (n, H)
        kl = mats["kl"][j, :n] if mats["kl"] is not None else logits_self_distill(
            student_h[j, :n], t_h, fw.weight, mb.response_ids[j, :n], temperature=ctx.cfg.rollout.temperature)[0]
        ref = mats["ref_logp"]
        out[j] = {"student_h": student_h[j, :n], "teacher_h": t_h, "ids": mb.response_ids[j, :n], "kl": kl,
                  "logp": mats["logp"][j, :n], "entropy": mats["entropy"][j, :n], "old_logp": mats["old_logp"][j, :n],
                  "ref_logp": None if ref is None else ref[j, :n]}
    return out


# ----------------------------------------------------------------------------- reduction

@dataclass(frozen=True)
class Part:
    """One micro-batch's statistics and what they stand for, as fractions of the whole training step."""

    stats: dict[str, float]
    loss: float
    """share of its update's loss normaliser, divided by the step's number of updates"""
    tokens: float
    """share of the response tokens of all the step's updates"""
    rows: float
    """share of the responses of all the step's updates"""
    passes: float
    """1 / epochs (a `sum` adds up over one pass)"""


def reduce_parts(parts: list[Part]) -> dict[str, tuple[float, float]]:
    """Per key, (numerator, denominator) of its combined value under its registered rule (see `sdpg.metrics`);
    the two add up across processes, so the caller may all-reduce them before `finish_reduce`."""
    out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for part in parts:
        gated = part.stats.get("gate/tokens", 0.0)
        for key, value in part.stats.items():
            rule = metric(key).combine
            weight = {"loss": part.loss, "tokens": part.tokens, "rows": part.rows, "gated tokens": gated,
                      "sum": part.passes, "step": 1.0}.get(rule)
            if weight is None:
                raise ValueError(f"metric {key!r} combines by {rule!r}, which is not a micro-batch rule")
            acc = out[key]
            if rule == "step":  # the same in every micro-batch: keep one
                acc[0], acc[1] = float(value), 1.0
            else:
                acc[0] += float(value) * weight
                acc[1] += 0.0 if rule == "sum" else weight
    return {k: (v[0], v[1]) for k, v in out.items()}


def finish_reduce(sums: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Combined values from `reduce_parts` sums: a sum as it is, a mean as numerator over denominator (a gated mean
    with no gated token is 0)."""
    return {key: num if metric(key).combine == "sum" else (num / den if den else 0.0)
            for key, (num, den) in sums.items()}


def reduce_stats(parts: list[Part]) -> dict[str, float]:
    """The step's statistics from its micro-batches' (one process)."""
    return finish_reduce(reduce_parts(parts))


def reduce_step(parts: list[Part], all_reduce: Callable[[list[float]], list[float]] | None = None) -> dict[str, float]:
    """The step's statistics from its micro-batches' on every process: `all_reduce` sums a list of floats over
    the processes (None: one process). Every process must hold the same keys."""
    sums = reduce_parts(parts)
    if all_reduce is None:
        return finish_reduce(sums)
    keys = sorted(sums)
    totals = all_reduce([v for k in keys for v in sums[k]])
    return finish_reduce({k: (totals[2 * i], totals[2 * i + 1]) for i, k in enumerate(keys)})


def skip_reason(error: str, grad_norm: float) -> str:
    """Why an optimizer update must not be applied, or "" to apply it: a micro-step that found NaN or inf
    (`error`, its message), or a non-finite gradient norm. A skipped update leaves weights and optimizer alone."""
    if error:
        return error
    return "" if math.isfinite(grad_norm) else f"gradient norm is {grad_norm}"


def teacher_stats(stats: dict[str, float], method: MethodSpec, loss, groups: list[dict]) -> dict[str, float]:
    """The step's statistics with the live teacher's KL: as the micro-batches measured it where the teacher ran on
    every row; else `kl/distill_mean` over the recorded groups' tokens (`groups`: `group_record` dicts), and, for a
    method without a live teacher in its loss, `kl/distill_gated_mean` too (gated SDPG, `teacher_gated` under
    `loss`, measured that one on every gated token already)."""
    live = needs_live_teacher(method)
    if live and not teacher_gated(method, loss):
        return stats
    out = {k: v for k, v in stats.items() if k not in LIVE_TEACHER_KEYS or (live and k == "kl/distill_gated_mean")}
    kl = [np.asarray(r["kl"], dtype=np.float64) for g in groups for r in g["responses"]]
    if sum(x.size for x in kl):
        out["kl/distill_mean"] = float(np.concatenate(kl).mean())
        if not live:
            gated = [np.asarray(r["kl"], dtype=np.float64) for g in groups for r in g["responses"] if r["gate"]]
            out["kl/distill_gated_mean"] = float(np.concatenate(gated).mean()) if sum(x.size for x in gated) else 0.0
    return out


# ----------------------------------------------------------------------------- rollout metrics

def rollout_metrics(verdicts: list, rewards: torch.Tensor, adv: torch.Tensor, lengths: torch.Tensor,
                    truncated: torch.Tensor, group_size: int) -> dict:
    """Per-step metrics of the scored rollouts ((B,) tensors over all of the step's responses)."""
    flat = rewards.view(-1, group_size).std(-1, unbiased=False) == 0  # (B/G,)
    return {**reward_metrics(verdicts), "reward/mean": float(rewards.mean()),
            "adv/values": [round(a, 4) for a in adv.tolist()],
            "adv/zero_var_groups": float(flat.float().mean()) if group_size > 1 else 1.0,
            "response/length_mean": float(lengths.float().mean()),
            "response/truncated": float(truncated.float().mean())}


def step_metrics(rollout: dict, stats: dict, *, beta_k: float, grad_norms: list[float], skipped: list[bool],
                 lr: float, tokens: float, seconds: dict[str, float]) -> dict:
    """The step's metrics row, the same keys on both trainers: the rollout's (`rollout_metrics` and what the
    trainer adds to them), the reduced statistics, one gradient norm and skip flag per optimizer update, the
    learning rate, and the time shares of `seconds` (`time_metrics`)."""
    return {**rollout, **stats, "grad/norm": sum(grad_norms) / len(grad_norms), "grad/norm_max": max(grad_norms),
            "optim/lr": lr, "optim/updates": float(len(skipped) - sum(skipped)), "beta/effective": beta_k,
            "step/skipped": sum(skipped) / len(skipped), "perf/tokens_per_s": tokens / seconds["step"],
            **time_metrics(seconds)}


NESTED_TIMES = {"rollout": ("old_logp",), "update": ("teacher", "reference")}
"""phases timed inside another one: each is reported on its own and taken out of the enclosing phase's share
(`reward` stays inside `rollout`, whose meaning includes scoring)"""


def time_metrics(seconds: dict[str, float]) -> dict[str, float]:
    """`time/<phase>` for every timed phase, phases inside another one (`NESTED_TIMES`) taken out of it."""
    out = {f"time/{name}": value for name, value in seconds.items()}
    for outer, inner in NESTED_TIMES.items():
        if outer in seconds:
            out[f"time/{outer}"] = seconds[outer] - sum(seconds.get(name, 0.0) for name in inner)
    return out


def logp_gap(sampled: torch.Tensor, recomputed: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """`rollout/logp_gap_mean` / `_max`: |sampler - recomputed| old log-probs over response tokens ((B, T) each)."""
    gap = (sampled - recomputed).abs()[mask.bool()]  # (N,)
    return {"rollout/logp_gap_mean": float(gap.mean()), "rollout/logp_gap_max": float(gap.max())}


# ----------------------------------------------------------------------------- timing

class Timer:
    """Seconds per phase name, added up over `with timer("name"):` blocks."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds

