"""The SDPG update loop: rollout -> reward -> advantage -> losses -> update -> records.

Legend: B sequences (prompts x G), G group size, P prompt tokens, T response tokens, H hidden, V vocabulary, N tokens.

Design choices:
- A step reads top to bottom (`train_step`): `sample_batch()` makes a frozen batch without gradient (rollouts,
  rewards, advantages, teacher prompts, old log-probs), then one optimizer update per mini-batch of
  `optim.mini_batch_prompts` whole groups, `optim.epochs` times over, as verl does; the beta schedule and the
  learning rate advance once per training step. Within an update, gradients accumulate over micro-batches, each
  loss weighted by its share of the mini-batch's normaliser (tokens for `token-mean`, sequences otherwise), so
  accumulation gives exactly the mini-batch loss.
- The micro-step itself (teacher, student, fused KL, the method's loss) and the metric reduction are
  `sdpg.step`'s, shared with the TRL-based trainer; the reduction follows `sdpg.metrics`, so a step's metrics
  do not change with the micro-batch size.
- Old log-probs (`rollout.recompute_old_logp`): recomputed by the training model before the first update on the
  rows of later updates; the first update uses its own log-probs (its weights are the step's start weights), so
  its ratio is exactly 1. The sampler's log-probs are kept for the gap metric.
- The teacher is the current model with no gradient on the privileged prompt and the very same response
  tokens; it runs on every row only for methods that use it, else on the recorded groups alone.
- A non-finite loss or gradient norm skips that optimizer update and is reported (`step/skipped`, a fraction).
- Real models: the rollout engine is the one `rollout.engine` names (`make_engine`; vLLM gets the weights
  after every step); micro-batches hold at most `optim.micro_batch` sequences and `optim.micro_batch_tokens`
  padded response tokens;
  model forwards run under bfloat16 autocast with `model.autocast` (the KL and the backward stay outside
  it); `loss.fused_kl = False` swaps in the materialised-logits KL, the baseline the fused one is measured
  against. Gradients are freed right after the optimizer step, before the next rollout needs the memory.
- The trainer only emits records; what is shown, and how, is the views' business.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from sdpg.config import TrainConfig, micro_rows
from sdpg.data import PromptRow, render_prompts
from sdpg.forward import lm_head_weight, response_hidden, token_logp
from sdpg.guards import check_finite_weights
from sdpg.losses import NonFiniteError, group_advantages
from sdpg.methods import Input, get_method
from sdpg.record_build import group_records, token_records
from sdpg.records import RecordStream
from sdpg.reward import MathVerifier
from sdpg.rollout import HFRolloutEngine, Rollout, RolloutEngine
from sdpg.step import (MicroBatch, MicroResult, Part, StepContext, Timer, logp_gap, lr_warmup, micro_slices,
                       micro_step, record_gates, reduce_step, rollout_metrics, score, skip_reason, step_context,
                       step_metrics, teacher_stats, update_plan)


@dataclass
class PromptSampler:
    """Deterministic epoch-wise shuffled order over the training rows; its state goes into checkpoints."""

    n_rows: int
    seed: int
    epoch: int = 0
    pos: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _shuffle(self) -> None:
        self._order = list(range(self.n_rows))
        random.Random(self.seed * 100_003 + self.epoch).shuffle(self._order)

    def take(self, n: int) -> list[int]:
        if not self._order:
            self._shuffle()
        out = []
        while len(out) < n:
            if self.pos == self.n_rows:
                self.epoch, self.pos = self.epoch + 1, 0
                self._shuffle()
            out.append(self._order[self.pos])
            self.pos += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._shuffle()


@dataclass(frozen=True)
class Scored:
    """One step's scored rollouts, laid out group after group."""

    rows: list[PromptRow]
    rollout: Rollout
    verdicts: list
    rewards: torch.Tensor  # (B,)
    adv: torch.Tensor  # (B,)
    zero_var_groups: float
    resample_rounds: int


@dataclass(frozen=True)
class Batch:
    """Everything a training step's updates read, made without gradient before the first update."""

    scored: Scored
    teacher_ids: torch.Tensor
    """(B, P') privileged prompts, on the training device"""
    teacher_mask: torch.Tensor
    """(B, P')"""
    old_logp: torch.Tensor
    """(B, T) the PPO ratio's old log-probs: recomputed by the training model (the first update's rows are written
    by that update, from its own forward), or the sampler's with `rollout.recompute_old_logp` off"""
    old_logp_s: float = 0.0
    """seconds the recomputation took"""

    rows = property(lambda self: self.scored.rows)
    rollout = property(lambda self: self.scored.rollout)
    verdicts = property(lambda self: self.scored.verdicts)
    rewards = property(lambda self: self.scored.rewards)
    adv = property(lambda self: self.scored.adv)


@dataclass(frozen=True)
class Update:
    """What one optimizer update returns: its micro-batches' results, gradient norm, and per-token records."""

    micro: list[tuple[slice, dict[str, float]]]
    """(rows of the batch, statistics) per micro-batch"""
    grad_norm: float
    skipped: bool
    records: dict[int, dict]
    """batch row -> per-token record"""


class _Forwards:
    """The engine's models as `sdpg.step.Forwards`: forwards under the configured autocast."""

    def __init__(self, trainer: "Trainer"):
        self.trainer = trainer
        self.weight = lm_head_weight(trainer.model)

    def hidden(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        return self.trainer._hidden(self.trainer.model, prompt_ids, prompt_mask, response_ids, response_mask)

    def reference_hidden(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        return self.trainer._hidden(self.trainer.ref_model, prompt_ids, prompt_mask, response_ids, response_mask)


class Trainer:
    def __init__(self, cfg: TrainConfig, *, model, tokenizer, ref_model, train_rows: list[PromptRow],
                 val_rows: list[PromptRow], records: RecordStream, verifier: MathVerifier):
        self.cfg, self.model, self.tokenizer, self.ref_model = cfg, model, tokenizer, ref_model
        self.train_rows, self.val_rows, self.records, self.verifier = train_rows, val_rows, records, verifier
        self.device = next(model.parameters()).device
        self.engine = make_engine(cfg, model, tokenizer)
        o = cfg.optim
        self.optimizer = adamw(model, o)
        # stepped once per training step: every update of a step shares its learning rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: lr_warmup(k, o.warmup_steps))
        self.sampler = PromptSampler(len(train_rows), cfg.run.seed)
        self.method = get_method(cfg.loss.method)
        self.forwards = _Forwards(self)
        self.timer = Timer()
        self.step = 0

    # ---------------- sampling ----------------
    def _render(self, texts: list[str]) -> list[str]:
        return render_prompts(self.tokenizer, texts, enable_thinking=self.cfg.model.enable_thinking)

    def _score(self, rows: list[PromptRow], rollout: Rollout) -> tuple[list, torch.Tensor]:
        g = rollout.group_size
        scores = score(self.verifier, rollout.texts, [row.answer for row in rows for _ in range(g)],
                       rollout.lengths.tolist(), self.cfg)
        self.timer.add("reward", scores.seconds)
        return scores.verdicts, scores.rewards

    def sample_rollouts(self) -> Scored:
        """Rollouts for one step; with dynamic sampling, zero-variance groups are replaced (bounded rounds)."""
        g, n = self.cfg.rollout.group_size, self.cfg.rollout.prompts_per_step
        rows = [self.train_rows[i] for i in self.sampler.take(n)]
        rollout = self.engine.generate(self._render([r.prompt for r in rows]), g)
        verdicts, rewards = self._score(rows, rollout)
        zero_var = float((rewards.view(-1, g).std(-1, unbiased=False) == 0).float().mean()) if g > 1 else 1.0
        rounds = 0
        while self.cfg.run.dynamic_sampling and rounds < self.cfg.run.max_resample:
            keep = (rewards.view(-1, g).std(-1, unbiased=False) > 0).tolist()
            if all(keep):
                break
            rounds += 1
            extra_rows = [self.train_rows[i] for i in self.sampler.take(n)]
            extra = self.engine.generate(self._render([r.prompt for r in extra_rows]), g)
            extra_verdicts, extra_rewards = self._score(extra_rows, extra)
            rows, rollout, verdicts, rewards = _merge_groups(
                (rows, rollout, verdicts, rewards, keep), (extra_rows, extra, extra_verdicts, extra_rewards), n,
                self.engine.pad_id)
        adv = group_advantages(rewards, g, scale=self.cfg.loss.adv_scale)  # (B,)
        return Scored(rows, rollout, verdicts, rewards, adv, zero_var, rounds)

    @torch.no_grad()
    def sample_batch(self) -> Batch:
        """The step's frozen batch: scored rollouts with advantages, the teacher's prompts, the old log-probs."""
        scored = self.sample_rollouts()
        g = scored.rollout.group_size
        teacher_ids, teacher_mask = (t.to(self.device) for t in self.engine.encode_prompts(
            self._render([row.teacher_prompt for row in scored.rows]), g))  # (B, P')
        t0 = time.perf_counter()
        old_logp = self._old_logp(scored.rollout)  # (B, T)
        return Batch(scored, teacher_ids, teacher_mask, old_logp, time.perf_counter() - t0)

    def _old_logp(self, ro: Rollout) -> torch.Tensor:
        """The sampler's log-probs, or (recompute on) the current model's on every row outside the first update,
        in the update's micro-batches; the first update writes its rows itself (`_update`)."""
        if not self.cfg.rollout.recompute_old_logp:
            return ro.old_logp
        old = ro.old_logp.clone()  # (B, T)
        self.model.train()  # the mode the updates run in
        first = self._update_rows(ro)[0]
        for sl in self._micro_slices(slice(first.stop, ro.response_ids.shape[0]), ro.response_ids.shape[1]):
            resp, rmask = ro.response_ids[sl], ro.response_mask[sl]
            h = self._hidden(self.model, ro.prompt_ids[sl], ro.prompt_mask[sl], resp, rmask)  # (b, T, H)
            old[sl] = token_logp(h, self.forwards.weight, resp, temperature=self.cfg.rollout.temperature) * rmask
        return old

    # ---------------- update ----------------
    def train_step(self) -> dict:
        """One rollout batch, one optimizer update per mini-batch and epoch; emits metrics and rollout records."""
        self.timer = timer = Timer()
        with timer("step"):
            with timer("rollout"):
                batch = self.sample_batch()
            ctx = self._context()
            plan = self._update_rows(batch.rollout)
            updates = [self._update(batch, ctx, rows, i // (len(plan) // self.cfg.optim.epochs))
                       for i, rows in enumerate(plan)]
            lr = self.scheduler.get_last_lr()[0]
            self.scheduler.step()
            with timer("update"):
                self.engine.sync_weights(self.model)
            with timer("records_write"):
                adv = batch.adv.tolist()
                gates = record_gates(self.method, self.cfg.loss, adv, [v.correct for v in batch.verdicts])
                groups = group_records(batch.rows, batch.rollout.texts, batch.rewards.tolist(), batch.verdicts, adv,
                                       gates, {i: rec for u in updates for i, rec in u.records.items()},
                                       batch.rollout.group_size)
                self.records.emit_rollouts(self.step + 1, groups)
        metrics = self._metrics(batch, ctx, updates, lr, groups)
        self.step += 1
        return metrics

    def _context(self) -> StepContext:
        """What every micro-batch of this step shares: config, method, and the step's scheduled beta."""
        ref_weight = lm_head_weight(self.ref_model) if Input.REF_DISTILL_KL in self.method.needs else None
        return step_context(self.cfg, self.method, self.step, ref_weight)

    def _update_rows(self, ro: Rollout) -> list[slice]:
        """The rows of each optimizer update, in order (`sdpg.step.update_plan`)."""
        o = self.cfg.optim
        return update_plan(ro.response_ids.shape[0], ro.group_size, o.mini_batch_prompts, o.epochs)

    def _update(self, batch: Batch, ctx: StepContext, rows: slice, epoch: int) -> Update:
        """One optimizer update on the mini-batch `rows`, its gradient accumulated over micro-batches."""
        first = epoch == 0 and rows.start == 0
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        micro, records, skip = [], {}, ""
        with self.timer("update"):
            for sl in self._micro_slices(rows, batch.rollout.response_ids.shape[1]):
                try:
                    result = self._micro(batch, ctx, sl, first, epoch)
                except NonFiniteError as exc:  # a NaN/inf update is skipped and reported, never applied
                    skip = str(exc)
                    break
                (result.loss * self._loss_share(batch, sl, rows)).backward()
                with self.timer("records"):
                    records |= self._token_records(batch, sl, result.records)
                if first and self.cfg.rollout.recompute_old_logp:  # the step-start policy's, for later epochs
                    batch.old_logp[sl] = result.logp * batch.rollout.response_mask[sl]
                micro.append((sl, result.stats))  # not the result: its hidden states would outlive the update
            grad_norm, skipped = self._apply(skip)
        return Update(micro, grad_norm, skipped, records)

    def _token_records(self, batch: Batch, sl: slice, args: dict[int, dict]) -> dict[int, dict]:
        """Per-token records of the micro-batch's recorded rows, by batch row, with the sampler's log-probs."""
        for j, a in args.items():
            a["sampler_logp"] = batch.rollout.old_logp[sl.start + j, :a["ids"].shape[0]]  # (n,) before any recompute
        built = token_records(self.tokenizer, self.forwards.weight, self.cfg.rollout.temperature, list(args.values()))
        return dict(zip((sl.start + j for j in args), built))

    def _micro(self, batch: Batch, ctx: StepContext, sl: slice, first: bool, epoch: int) -> MicroResult:
        """The shared micro-step on rows `sl`: the frozen reference's inputs, then `sdpg.step.micro_step`."""
        ro = batch.rollout
        with self.timer("reference"):
            refs = self._reference_inputs(ro, sl, batch.teacher_ids[sl], batch.teacher_mask[sl])
        recorded = min(self.cfg.run.record_groups, len(batch.rows)) * ro.group_size
        mb = MicroBatch(ro.prompt_ids[sl], ro.prompt_mask[sl], batch.teacher_ids[sl], batch.teacher_mask[sl],
                        ro.response_ids[sl], ro.response_mask[sl], batch.adv[sl].to(self.device),
                        torch.tensor([v.correct for v in batch.verdicts[sl]], device=self.device),
                        old_logp=None if first and self.cfg.rollout.recompute_old_logp else batch.old_logp[sl],
                        refs=refs, record_rows=tuple(i - sl.start for i in range(sl.start, min(sl.stop, recorded)))
                        if epoch == 0 else ())
        result = micro_step(self.forwards, mb, ctx)
        self.timer.add("teacher", result.teacher_s)
        return result

    def _loss_share(self, batch: Batch, sl: slice, rows: slice) -> float:
        """The micro-batch's share of its update's loss normaliser (tokens for token-mean, else sequences); a
        method with its own `loss_tokens` (opsd_fork: the gated ones) normalises by those instead."""
        mask = batch.rollout.response_mask
        if self.method.loss_tokens is not None:
            norm = self.method.loss_tokens(mask[rows].float(), batch.adv[rows].to(mask.device), torch.tensor(
                [v.correct for v in batch.verdicts[rows]], device=mask.device))  # (b, T)
            return loss_share(norm, slice(sl.start - rows.start, sl.stop - rows.start), self.cfg.loss.agg)
        if self.cfg.loss.agg == "token-mean":
            return float(mask[sl].sum() / mask[rows].sum())
        return (sl.stop - sl.start) / (rows.stop - rows.start)

    def _apply(self, error: str) -> tuple[float, bool]:
        """Clip and apply the accumulated gradient, unless `sdpg.step.skip_reason` skips the update (a micro-step's
        `error`, or a non-finite norm); (grad norm, skipped)."""
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip))
        skip = skip_reason(error, grad_norm)
        if skip:
            self.records.emit_event("step_skipped", step=self.step + 1, reason=skip)
        else:
            self.optimizer.step()
            check_finite_weights(self.model, self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are not needed until the next update: free them
        return grad_norm, bool(skip)

    def _metrics(self, batch: Batch, ctx: StepContext, updates: list[Update], lr: float, groups: list[dict]) -> dict:
        """The step's metrics row: rollout, reduced micro-batch statistics, update and timing values."""
        ro, t = batch.rollout, self.timer.seconds
        mask = ro.response_mask.float()  # (B, T)
        rollout = {**rollout_metrics(batch.verdicts, batch.rewards, batch.adv, ro.lengths, ro.truncated, ro.group_size),
                   "adv/zero_var_groups": batch.scored.zero_var_groups,
                   "adv/resample_rounds": batch.scored.resample_rounds}
        stats = teacher_stats(reduce_step(self._parts(batch, updates)), self.method, self.cfg.loss, groups)
        # records are built inside the update (timed there) and written after it: one phase of their own
        seconds = {"old_logp": batch.old_logp_s, **{k: t[k] for k in ("rollout", "reward", "teacher", "reference",
                                                                       "step")},
                   "update": t["update"] - t["records"], "records": t["records"] + t["records_write"]}
        metrics = step_metrics(rollout, stats, beta_k=ctx.beta_k, grad_norms=[u.grad_norm for u in updates],
                               skipped=[u.skipped for u in updates], lr=lr, tokens=float(mask.sum()), seconds=seconds)
        if self.cfg.rollout.recompute_old_logp:
            metrics |= logp_gap(ro.old_logp, batch.old_logp, mask)
        return metrics

    def _parts(self, batch: Batch, updates: list[Update]) -> list[Part]:
        """Every micro-batch's statistics with its shares of the step (see `sdpg.step.Part`)."""
        mask, epochs = batch.rollout.response_mask.float(), self.cfg.optim.epochs
        n_rows, n_tokens, per_pass = mask.shape[0], float(mask.sum()), len(updates) // epochs
        plan, parts = self._update_rows(batch.rollout), []
        for k, update in enumerate(updates):
            rows = plan[k % per_pass]
            for sl, stats in update.micro:
                parts.append(Part(stats, self._loss_share(batch, sl, rows) / len(updates),
                                  float(mask[sl].sum()) / (epochs * n_tokens), (sl.stop - sl.start) / (epochs * n_rows),
                                  1.0 / epochs))
        return parts

    def _micro_slices(self, rows: slice, response_tokens: int) -> list[slice]:
        """The rows of each forward/backward pass within `rows`: at most `optim.micro_batch` sequences and at
        most `optim.micro_batch_tokens` padded response tokens (at least one sequence)."""
        return micro_slices(rows, micro_rows(self.cfg.optim, response_tokens))

    def _hidden(self, model, prompt_ids, prompt_mask, resp, rmask) -> torch.Tensor:
        """`response_hidden` under bfloat16 autocast when `model.autocast` is on: (b, P) + (b, T) -> (b, T, H)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.model.autocast):
            return response_hidden(model, prompt_ids, prompt_mask, resp, rmask)  # (b, T, H)

    @torch.no_grad()
    def _reference_inputs(self, ro: Rollout, sl: slice, teacher_ids, teacher_mask) -> dict:
        """The frozen reference's log-probs the method asks for: on the student prompt (the alpha anchor)
        and/or on the privileged prompt (a frozen-reference teacher)."""
        out, temp = {}, self.cfg.rollout.temperature
        resp, rmask = ro.response_ids[sl], ro.response_mask[sl]
        if Input.REF_LOGP in self.method.needs and self.cfg.loss.alpha > 0:
            h = self._hidden(self.ref_model, ro.prompt_ids[sl], ro.prompt_mask[sl], resp, rmask)  # (b, T, H)
            out[Input.REF_LOGP.value] = token_logp(h, lm_head_weight(self.ref_model), resp, temperature=temp) * rmask
        if Input.REF_TEACHER_LOGP in self.method.needs:
            h = self._hidden(self.ref_model, teacher_ids, teacher_mask, resp, rmask)  # (b, T, H)
            out[Input.REF_TEACHER_LOGP.value] = token_logp(h, lm_head_weight(self.ref_model), resp,
                                                 temperature=self.cfg.loss.opsd_teacher_temperature) * rmask
        return out

    # ---------------- evaluation ----------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out pass@1 (mean over k samples), pass@k, and the teacher's pass@1 with privileged context."""
        with torch.random.fork_rng():  # evaluation must not shift the training run's random stream
            torch.manual_seed(self.cfg.run.seed + 7919 * self.step)
            return self._evaluate()

    def _evaluate(self) -> dict:
        k = self.cfg.run.eval_samples
        answers = [row.answer for row in self.val_rows for _ in range(k)]
        out = {}
        for name, texts in (("", [r.prompt for r in self.val_rows]), ("teacher_", [r.teacher_prompt for r in self.val_rows])):
            rollout = self.engine.generate(self._render(texts), k)
            verdicts = self.verifier.score(rollout.texts, answers)
            correct = torch.tensor([v.correct for v in verdicts], dtype=torch.float32).view(-1, k)  # (n_val, k)
            out[f"eval/{name}pass@1"] = float(correct.mean())
            if not name:
                out[f"eval/pass@{k}"] = float(correct.max(-1).values.mean())
                out["eval/response_length"] = float(rollout.lengths.float().mean())
        return out


def loss_share(norm: torch.Tensor, sl: slice, agg: str) -> float:
    """A micro-batch's share of the batch's loss normaliser: its tokens of `norm` (B, T), the tokens the loss
    averages over, for `token-mean`, else its sequences with such tokens; 0 when the batch has none."""
    if not bool(norm.any()):
        return 0.0
    if agg == "token-mean":
        return float(norm[sl].sum() / norm.sum())
    return int(norm[sl].bool().any(-1).sum()) / int(norm.bool().any(-1).sum())


def make_engine(cfg: TrainConfig, model, tokenizer) -> RolloutEngine:
    """The rollout engine `cfg.rollout.engine` names, sampling from `model` (or, for vLLM, a mirror of it)."""
    r = cfg.rollout
    common = dict(temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
                  max_prompt_tokens=r.max_prompt_tokens)
    if r.engine == "vllm":
        from sdpg.rollout_vllm import VLLMRolloutEngine  # vllm is optional and slow to import

        bf16 = cfg.model.dtype == "bfloat16" or cfg.model.autocast
        return VLLMRolloutEngine(model, tokenizer, seed=cfg.run.seed, dtype="bfloat16" if bf16 else "float32",
                                 gpu_memory_utilization=r.vllm_gpu_memory_utilization, sleep=r.vllm_sleep, **common)
    return HFRolloutEngine(model, tokenizer, **common)


def adamw(model, o) -> torch.optim.AdamW:
    """AdamW over the model's parameters, with torch's fused kernel where their devices have it (one pass per
    tensor: 4x the per-tensor loop's speed on the CPU at 25M parameters, `bench/RESULTS.md`; the same update up to
    float rounding), else the default implementation."""
    params = list(model.parameters())
    kwargs = dict(lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except RuntimeError:  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, **kwargs)




def _merge_groups(kept, extra, n_groups: int, pad_id: int):
    """Keep the informative groups of `kept`, top up from `extra`'s informative ones, then fill to n groups."""
    rows, ro, verdicts, rewards, keep = kept
    x_rows, x_ro, x_verdicts, x_rewards = extra
    g = ro.group_size
    x_keep = (x_rewards.view(-1, g).std(-1, unbiased=False) > 0).tolist()
    order = [("a", i) for i, k in enumerate(keep) if k] + [("b", i) for i, k in enumerate(x_keep) if k]
    order += [("a", i) for i, k in enumerate(keep) if not k]
    order = order[:n_groups]
    src = {"a": (rows, ro, verdicts, rewards), "b": (x_rows, x_ro, x_verdicts, x_rewards)}
    seq = [(s, gi * g + j) for s, gi in order for j in range(g)]
    new_rows = [src[s][0][gi] for s, gi in order]
    width_p = max(ro.prompt_ids.shape[1], x_ro.prompt_ids.shape[1])
    width_t = max(ro.response_ids.shape[1], x_ro.response_ids.shape[1])

    def gather(attr, width, left, value):
        parts = []
        for s, i in seq:
            t = getattr(src[s][1], attr)[i]
            pad = (width - t.shape[0], 0) if left else (0, width - t.shape[0])
            parts.append(torch.nn.functional.pad(t, pad, value=value))
        return torch.stack(parts)

    merged = Rollout(
        prompt_ids=gather("prompt_ids", width_p, True, pad_id), prompt_mask=gather("prompt_mask", width_p, True, 0),
        response_ids=gather("response_ids", width_t, False, pad_id),
        response_mask=gather("response_mask", width_t, False, 0), old_logp=gather("old_logp", width_t, False, 0.0),
        texts=[src[s][1].texts[i] for s, i in seq], truncated=torch.stack([src[s][1].truncated[i] for s, i in seq]),
        group_size=g)
    new_verdicts = [src[s][2][i] for s, i in seq]
    new_rewards = torch.stack([src[s][3][i] for s, i in seq])  # (B,)
    return new_rows, merged, new_verdicts, new_rewards
