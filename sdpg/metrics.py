"""The metric registry: every key a training step writes, what it means, how its parts combine, and TRL's name.

Design choices:
- One entry per key, beside the record schema (`sdpg.records`): the short label views name it by and the rule that
  combines a key's micro-batch and update values live with the key; `sdpg.step.reduce_stats` reads the rule from
  here, so both trainers combine the same way. A key the registry does not know is an error there, not a silent mean.
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
    label: str
    """short human name, for legends and tables (unique among the registered keys)"""
    meaning: str
    """what the value is, with its unit"""
    combine: str
    """how micro-batch and update values make the step's value: one of COMBINE"""
    trl: str | None = None
    """the name TRL's GRPOTrainer logs for the same quantity, if it has one"""


_ENTRIES = (
    # rollout, once per training step
    Metric("reward/mean", "reward",
           "mean reward of the step's responses (after any overlong penalty)", "step", "reward"),
    Metric("reward/accuracy", "accuracy", "fraction of responses the verifier judged correct", "step"),
    Metric("reward/no_answer", "no answer", "responses without a final answer to verify (count)", "step"),
    Metric("reward/timeouts", "timeouts", "verifier calls that ran out of time (count)", "step"),
    Metric("reward/errors", "verifier errors", "verifier calls that failed (count)", "step"),
    Metric("adv/values", "advantages", "the step's group advantages, one per response (list)", "step"),
    Metric("adv/zero_var_groups", "zero-variance groups",
           "fraction of groups whose rewards are all equal", "step", "frac_reward_zero_std"),
    Metric("adv/resample_rounds", "resample rounds", "dynamic sampling: extra rollout rounds taken", "step"),
    Metric("response/length_mean", "length", "mean response length in tokens", "step", "completions/mean_length"),
    Metric("response/truncated", "truncated", "fraction of responses that hit the length limit", "step",
           "completions/clipped_ratio"),
    Metric("rollout/logp_gap_mean", "mean |gap|",
           "mean |sampler log-prob - recomputed old log-prob| over response tokens", "step"),
    Metric("rollout/logp_gap_max", "max |gap|",
           "largest |sampler log-prob - recomputed old log-prob| over response tokens", "step"),
    # loss terms and their statistics, per micro-batch
    Metric("loss/total", "total", "the loss the optimizer minimised", "loss", "loss"),
    Metric("loss/pg", "policy gradient", "outcome (clipped policy-gradient) term", "loss"),
    Metric("loss/distill", "distill KL", "beta x gated distillation KL term", "loss"),
    Metric("loss/ref_kl", "ref anchor", "alpha x reference-anchor term", "loss"),
    Metric("loss/clipfrac_high", "clip high", "fraction of tokens with A > 0 whose ratio is clipped above", "tokens",
           "clip_ratio/high_mean"),
    Metric("loss/clipfrac_low", "clip low", "fraction of tokens with A < 0 whose ratio is clipped below", "tokens",
           "clip_ratio/low_mean"),
    Metric("loss/dual_clipfrac", "dual clip",
           "fraction of tokens with A < 0 whose ratio exceeds the dual-clip cap", "tokens"),
    Metric("kl/approx_old", "KL to old policy",
           "k1 estimate of KL(pi_old || pi_theta) on the sampled tokens (0 in the first update)",
           "tokens"),
    Metric("kl/distill_mean", "KL to teacher",
           "KL(student || live teacher) per response token, full vocabulary (nats); recorded "
           "groups only for methods without a live teacher in their loss and for gated SDPG", "tokens"),
    Metric("kl/distill_gated_mean", "KL to teacher (gated)",
           "the same KL over the gated responses' tokens only (nats)", "gated tokens"),
    Metric("kl/clamped_fraction", "KL clamped", "fraction of the gated responses' tokens whose distillation KL exceeds "
           "loss.kl_clamp (their loss term is capped there and gets no gradient)", "gated tokens"),
    Metric("kl/ref_mean", "KL to reference",
           "reference-anchor penalty per response token (the loss.ref_mode estimator)", "tokens", "kl"),
    Metric("kl/ref_teacher_mean", "KL to frozen teacher",
           "OPSD: KL(student || frozen privileged teacher) per response token", "tokens"),
    Metric("gate/fraction", "gate passes", "fraction of responses the distillation gate passes", "rows"),
    Metric("gate/tokens", "gated tokens", "response tokens of the gated responses (count over one pass)", "sum"),
    Metric("entropy/mean", "entropy", "student entropy per response token (nats)", "tokens", "entropy"),
    Metric("rlsd/lambda", "RLSD λ", "RLSD: weight of the teacher-evidence factor at this step", "rows"),
    Metric("rlsd/weight_mean", "RLSD weight", "RLSD: mean clipped evidence weight per token", "tokens"),
    Metric("rlsd/weight_clipfrac", "RLSD weight clipped",
           "RLSD: fraction of tokens whose evidence weight is clipped", "tokens"),
    Metric("opsd/weight_mean", "OPSD weight", "OPSD-fork: mean token weight over gated tokens", "gated tokens"),
    # the update
    Metric("beta/effective", "β effective", "scheduled distillation weight of this training step", "step"),
    Metric("grad/norm", "grad norm (mean over updates)",
           "gradient norm before clipping, mean over the step's updates", "updates", "grad_norm"),
    Metric("grad/norm_max", "grad norm (largest update)", "largest gradient norm of the step's updates", "max"),
    Metric("optim/lr", "lr", "learning rate of this training step", "step", "learning_rate"),
    Metric("optim/updates", "updates applied", "optimizer updates applied in this training step", "step"),
    Metric("step/skipped", "updates skipped",
           "fraction of the step's updates skipped for a non-finite loss or gradient", "step"),
    # timing
    Metric("perf/tokens_per_s", "tokens/s", "response tokens trained per second of the step", "step"),
    Metric("time/rollout", "time: rollout", "seconds sampling (and scoring) the step's responses", "step"),
    Metric("time/reward", "time: verifier", "seconds in the verifier", "step"),
    Metric("time/teacher", "time: teacher", "seconds in the teacher's forwards", "step"),
    Metric("time/reference", "time: reference", "seconds in the frozen reference's forwards", "step"),
    Metric("time/old_logp", "time: old log-probs", "seconds recomputing the old log-probs", "step"),
    Metric("time/update", "time: update",
           "seconds in the student forwards, backward passes and optimizer steps", "step"),
    Metric("time/records", "time: records",
           "seconds building the recorded groups' per-token records and writing them", "step"),
    Metric("time/step", "time: whole step", "seconds for the whole training step", "step", "step_time"),
    # evaluation, every run.eval_every steps
    Metric("eval/pass@1", "student pass@1", "held-out pass@1: mean correctness over run.eval_samples samples", "step"),
    Metric("eval/pass@{k}", "student pass@k", "held-out pass@k: any of the k samples correct", "step"),
    Metric("eval/teacher_pass@1", "teacher pass@1 (hint)",
           "held-out pass@1 of the teacher (with the privileged context)", "step"),
    Metric("eval/response_length", "held-out length", "mean held-out response length in tokens", "step"),
)
METRICS: dict[str, Metric] = {m.key: m for m in _ENTRIES}
_PATTERNS = [(re.compile(re.escape(m.key).replace(r"\{k\}", r"\d+") + "$"), m) for m in _ENTRIES if "{k}" in m.key]
LIVE_TEACHER_KEYS = ("kl/distill_mean", "kl/distill_gated_mean")
"""keys the micro-batches measure with the live teacher on every response token"""


def label(key: str) -> str:
    """The short human name of a registered `key`; `eval/pass@k` (any k, as views ask for it) is the pass@k label."""
    if key.endswith("@k"):
        key = key[:-1] + "{k}"
    return METRICS[key].label if key in METRICS else metric(key).label


def metric(key: str) -> Metric:
    """The registry entry of `key`; KeyError naming it when it is not registered."""
    if key in METRICS:
        return METRICS[key]
    for pattern, entry in _PATTERNS:
        if pattern.match(key):
            return entry
    raise KeyError(f"metric {key!r} is not registered in sdpg.metrics.METRICS (add its meaning and combine rule)")


LIST_KEYS = frozenset({"adv/values"})
"""keys whose value is a list of numbers; every other key holds a number (or null: NaN/inf are written as null)"""


def metrics_row_problem(row: dict) -> str | None:
    """Why a metrics row read back from a file cannot be drawn (naming the key), or None when it can. Only registered
    keys (and `time`) are checked: the views draw nothing else."""
    for key, value in row.items():
        if key != "time" and not _registered(key):
            continue
        if key in LIST_KEYS:
            if not isinstance(value, list) or not all(v is None or _is_number(v) for v in value):
                return f"{key} is not a list of numbers"
        elif value is not None and not _is_number(value):
            return f"{key} is {type(value).__name__} {str(value)[:40]!r}, not a number"
    return None


def _registered(key: str) -> bool:
    try:
        metric(key)
    except KeyError:
        return False
    return True


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
