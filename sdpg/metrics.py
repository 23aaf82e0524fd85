"""The metric registry: every key a training step writes, what it means, how its parts combine, and TRL's name.

Design choices:
- One entry per key, beside the record schema (`sdpg.records`): the rule that combines a key's micro-batch and
  update values lives with the key, and `sdpg.step.reduce_stats` reads it from here, so both trainers combine the
  same way. A key the registry does not know is an error there, not a silent mean.
- Combine rules (`COMBINE`), for statistics computed per micro-batch and then per update of a training step:
  `loss`: weighted by the micro-batch's share of its update's loss normaliser, then averaged over updates (the mean
  of the losses the optimizer saw); `tokens` / `rows` / `gated tokens`: weighted by the response tokens, responses
  or gated tokens (`gate/tokens`) behind the value, over all updates; `sum`: added up over one pass over the batch
  (averaged over epochs); `max`: the largest; `updates`: the mean over the step's optimizer updates; `step`: written
  once per training step (rollout, schedule, timing and evaluation values), never reduced.
- Methods without a live teacher in their loss (`sdpg.step.needs_live_teacher`: GRPO, OPSD-fork) run the teacher on
  the recorded groups only (`run.record_groups`): their `kl/distill_mean` and `kl/distill_gated_mean` are means over
  those groups' tokens (absent with no recorded group); GRPO writes no `gate/tokens` (OPSD-fork does: its weights
  average over its gated tokens). SDPG with its gate on runs the teacher on the gated responses and the recorded
  groups (`sdpg.step.teacher_rows`): its `kl/distill_gated_mean` is over every gated token as before, its
  `kl/distill_mean` over the recorded groups' tokens, as GRPO's.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

COMBINE = ("loss", "tokens", "rows", "gated tokens", "sum", "max", "updates", "step")


@dataclass(frozen=True)
class Metric:
    key: str
    """namespaced key as written in the metrics rows (`{k}` stands for a number)"""
    meaning: str
    """what the value is, with its unit"""
    combine: str
    """how micro-batch and update values make the step's value: one of COMBINE"""
    trl: str | None = None
    """the name TRL's GRPOTrainer logs for the same quantity, if it has one"""


_ENTRIES = (
    # rollout, once per training step
    Metric("reward/mean", "mean reward of the step's responses (after any overlong penalty)", "step", "reward"),
    Metric("reward/accuracy", "fraction of responses the verifier judged correct", "step"),
    Metric("reward/no_answer", "responses without a final answer to verify (count)", "step"),
    Metric("reward/timeouts", "verifier calls that ran out of time (count)", "step"),
    Metric("reward/errors", "verifier calls that failed (count)", "step"),
    Metric("adv/values", "the step's group advantages, one per response (list)", "step"),
    Metric("adv/zero_var_groups", "fraction of groups whose rewards are all equal", "step", "frac_reward_zero_std"),
    Metric("adv/resample_rounds", "dynamic sampling: extra rollout rounds taken", "step"),
    Metric("response/length_mean", "mean response length in tokens", "step", "completions/mean_length"),
    Metric("response/truncated", "fraction of responses that hit the length limit", "step",
           "completions/clipped_ratio"),
    Metric("rollout/logp_gap_mean", "mean |sampler log-prob - recomputed old log-prob| over response tokens", "step"),
    Metric("rollout/logp_gap_max", "largest |sampler log-prob - recomputed old log-prob| over response tokens", "step"),
    # loss terms and their statistics, per micro-batch
    Metric("loss/total", "the loss the optimizer minimised", "loss", "loss"),
    Metric("loss/pg", "outcome (clipped policy-gradient) term", "loss"),
    Metric("loss/distill", "beta x gated distillation KL term", "loss"),
    Metric("loss/ref_kl", "alpha x reference-anchor term", "loss"),
    Metric("loss/clipfrac_high", "fraction of tokens with A > 0 whose ratio is clipped above", "tokens",
           "clip_ratio/high_mean"),
    Metric("loss/clipfrac_low", "fraction of tokens with A < 0 whose ratio is clipped below", "tokens",
           "clip_ratio/low_mean"),
    Metric("loss/dual_clipfrac", "fraction of tokens with A < 0 whose ratio exceeds the dual-clip cap", "tokens"),
    Metric("kl/approx_old", "k1 estimate of KL(pi_old || pi_theta) on the sampled tokens (0 in the first update)",
           "tokens"),
    Metric("kl/distill_mean", "KL(student || live teacher) per response token, full vocabulary (nats); recorded "
           "groups only for methods without a live teacher in their loss and for gated SDPG", "tokens"),
    Metric("kl/distill_gated_mean", "the same KL over the gated responses' tokens only (nats)", "gated tokens"),
    Metric("kl/clamped_fraction", "fraction of the gated responses' tokens whose distillation KL exceeds "
           "loss.kl_clamp (their loss term is capped there and gets no gradient)", "gated tokens"),
    Metric("kl/ref_mean", "reference-anchor penalty per response token (the loss.ref_mode estimator)", "tokens", "kl"),
    Metric("kl/ref_teacher_mean", "OPSD: KL(student || frozen privileged teacher) per response token", "tokens"),
    Metric("gate/fraction", "fraction of responses the distillation gate passes", "rows"),
    Metric("gate/tokens", "response tokens of the gated responses (count over one pass)", "sum"),
    Metric("entropy/mean", "student entropy per response token (nats)", "tokens", "entropy"),
    Metric("rlsd/lambda", "RLSD: weight of the teacher-evidence factor at this step", "rows"),
    Metric("rlsd/weight_mean", "RLSD: mean clipped evidence weight per token", "tokens"),
    Metric("rlsd/weight_clipfrac", "RLSD: fraction of tokens whose evidence weight is clipped", "tokens"),
    Metric("opsd/weight_mean", "OPSD-fork: mean token weight over gated tokens", "gated tokens"),
    # the update
    Metric("beta/effective", "scheduled distillation weight of this training step", "step"),
    Metric("grad/norm", "gradient norm before clipping, mean over the step's updates", "updates", "grad_norm"),
    Metric("grad/norm_max", "largest gradient norm of the step's updates", "max"),
    Metric("optim/lr", "learning rate of this training step", "step", "learning_rate"),
    Metric("optim/updates", "optimizer updates applied in this training step", "step"),
    Metric("step/skipped", "fraction of the step's updates skipped for a non-finite loss or gradient", "step"),
    # timing
    Metric("perf/tokens_per_s", "response tokens trained per second of the step", "step"),
    Metric("time/rollout", "seconds sampling (and scoring) the step's responses", "step"),
    Metric("time/reward", "seconds in the verifier", "step"),
    Metric("time/teacher", "seconds in the teacher's forwards", "step"),
    Metric("time/reference", "seconds in the frozen reference's forwards", "step"),
    Metric("time/old_logp", "seconds recomputing the old log-probs", "step"),
    Metric("time/update", "seconds in the student forwards, backward passes and optimizer steps", "step"),
    Metric("time/records", "seconds building the recorded groups' per-token records and writing them", "step"),
    Metric("time/step", "seconds for the whole training step", "step", "step_time"),
    # evaluation, every run.eval_every steps
    Metric("eval/pass@1", "held-out pass@1: mean correctness over run.eval_samples samples", "step"),
    Metric("eval/pass@{k}", "held-out pass@k: any of the k samples correct", "step"),
    Metric("eval/teacher_pass@1", "held-out pass@1 of the teacher (with the privileged context)", "step"),
    Metric("eval/response_length", "mean held-out response length in tokens", "step"),
)
METRICS: dict[str, Metric] = {m.key: m for m in _ENTRIES}
_PATTERNS = [(re.compile(re.escape(m.key).replace(r"\{k\}", r"\d+") + "$"), m) for m in _ENTRIES if "{k}" in m.key]
LIVE_TEACHER_KEYS = ("kl/distill_mean", "kl/distill_gated_mean")
"""keys the micro-batches measure with the live teacher on every response token"""


def metric(key: str) -> Metric:
    """The registry entry of `key`; KeyError naming it when it is not registered."""
    if key in METRICS:
        return METRICS[key]
    for pattern, entry in _PATTERNS:
        if pattern.match(key):
            return entry
    raise KeyError(f"metric {key!r} is not registered in sdpg.metrics.METRICS (add its meaning and combine rule)")
