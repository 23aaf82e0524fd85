"""SDPG on TRL's GRPO trainer: TRL's data flow, generation (transformers or a vLLM server), accelerate / DeepSpeed
distribution and checkpoints; our teacher, loss, advantages and records.

Legend: B sequences in a micro-batch, P / P' student / teacher prompt tokens (left-padded), T response tokens,
H hidden size, V vocabulary, N response tokens kept.

Design choices:
- Built on `trl.GRPOTrainer`, not `trl.experimental.sdpo.SDPOTrainer`. SDPO's teacher prompt is a reprompt built from
  a successful sibling rollout (the `privileged_context` column only enters through a feedback template), its loss is
  a convex mix `(1 - w) policy + w distill`, and its full-logit KL materialises (B, T, V) tensors; all of that would
  be overridden. GRPOTrainer is TRL's stable core with the same vLLM server, reference model and DeepSpeed plumbing,
  and a small surface to override.
- Overridden, and nothing else: `_generate_and_score_completions` (after TRL's own: our group advantages from the
  gathered rewards, the teacher prompts, rollout metrics), `_prepare_inputs` (no shuffle), `compute_loss` (our
  method's loss on one micro-batch), `training_step` (closes a step's metrics), `create_scheduler` /
  `get_decay_parameter_names` (the engine's warmup and weight-decay set).
- The step is the engine's own (`sdpg.step`): the micro-step (teacher and student forwards, fused KL, the method's
  loss), beta, scoring with the overlong penalty, the metric reduction (`reduce_step`, TRL's all-reduce passed
  in), the non-finite-update rule (`skip_reason`, applied in `_clip_grad_norm`: a skipped update's gradients are
  dropped), the metrics row (`step_metrics`) and the group records. The teacher is the current model with no
  gradient on the student text followed by the row's privileged context and the very same response tokens.
- Old log-probs as in the engine: with `rollout.recompute_old_logp`, the first update's own log-probs, and TRL's
  no-grad recomputation before the first update (`old_per_token_logps`, computed by TRL whenever a generation
  feeds several updates) for the later ones; the sampler's log-probs, when it gave them (vLLM, a rollout hook),
  give the gap metric. Off: the sampler's when given, else TRL's.
- Mini-batches: TRL's generation batch is the step's rollout batch, its updates the mini-batches
  (`sdpg.scale.config.batch_layout`). TRL's shuffle of the generation batch is switched off (`_prepare_inputs`) so
  mini-batches are whole groups in order, as the engine's; TRL's global step counts updates, the training step is
  it divided by `updates_per_step`.
- Relies on TRL 1.16 internals besides the public hooks (`_generate_and_score_completions`, `_tokenize_prompts`,
  `_step`, `_clip_grad_norm`): the version is pinned in requirements.txt.
- Both forwards run through the (possibly DDP- or DeepSpeed-wrapped) model's own forward with the
  `sdpg_backbone` switch (`add_backbone_switch`), so the wrapper's hooks see them. The fused KL runs after the
  forward, outside accelerate's autocast (which wraps the forward only), and computes in float32 itself.
- Each micro-batch loss is scaled by its share of its mini-batch's normaliser times the world size (tokens for
  `token-mean`, sequences otherwise): summed over micro-batches and averaged over processes by DDP / DeepSpeed, the
  gradient is exactly the mini-batch one, as in the engine.
- Records: per-step metrics carry the engine's keys, reduced over processes; per-token rollout records come from
  process 0's first whole groups. They reach callbacks as an `on_sdpg_step(args, state, control, step, metrics,
  groups, skipped)` event (see `sdpg.scale.records`) at the log of the step's last optimizer update (`log`), with
  the updates' gradient norms and learning rate; `skipped` holds the reasons of skipped updates.
"""
from __future__ import annotations

import functools
import time
import types
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from trl import GRPOTrainer
from trl.trainer import grpo_trainer as trl_grpo
from trl.trainer.utils import pad

from sdpg.config import TrainConfig
from sdpg.data import PromptRow
from sdpg.forward import activation_checkpointing, lm_head_weight, response_hidden, token_logp
from sdpg.rollout import cache_kwarg
from sdpg.losses import NonFiniteError, group_advantages
from sdpg.methods import Input, get_method
from sdpg.reward import MathVerifier
from sdpg.scale.config import ScaleConfig, check_supported, grpo_config, updates_per_step
from sdpg.record_build import group_records, token_records
from sdpg.step import (MicroBatch, Part, StepContext, lr_warmup, micro_step, record_gates, reduce_step, rollout_metrics,
                       score, skip_reason, step_context, step_metrics, teacher_stats)

def rows_to_dataset(rows: list[PromptRow], tokenizer) -> Dataset:
    """Our rows as TRL's prompt dataset: `prompt` (a user message, or plain text for a tokenizer without a chat
    template), `privileged_context`, `answer` (read by the reward), `data_source`."""
    if not rows:
        raise ValueError("rows_to_dataset: no rows")
    chat = bool(tokenizer.chat_template)
    return Dataset.from_list([{"prompt": _prompt(row.prompt, chat), "privileged_context": row.context,
                               "answer": row.answer, "data_source": row.data_source} for row in rows])


def add_backbone_switch(model) -> None:
    """Make `model(..., sdpg_backbone=True)` return `model.base_model(...)`'s outputs (final hidden states).

    Without the switch the forward is the one the model had (TRL's fused-head forward, generation). Called through a
    DDP or DeepSpeed wrapper, the backbone then runs inside the wrapper's forward.
    """
    inner = model.forward

    @functools.wraps(type(model).forward)
    def forward(self, *args, sdpg_backbone: bool = False, **kwargs):
        if sdpg_backbone:
            return self.base_model(*args, **kwargs)
        return inner(*args, **kwargs)

    model.forward = types.MethodType(forward, model)


class VerifierReward:
    """TRL reward function: the math verifier's reward, plus the DAPO overlong penalty, per completion.

    Completions are decoded from their token ids as the engine's rollout decodes them and scored by the engine's
    `sdpg.step.score`. The last call's texts, rewards, verdicts and verifier seconds stay readable (the trainer's
    records and metrics use them).
    """

    def __init__(self, verifier: MathVerifier, tokenizer, cfg: TrainConfig):
        self.verifier, self.tokenizer, self.cfg = verifier, tokenizer, cfg
        self.texts: list[str] = []
        self.rewards: list[float] = []
        self.verdicts: list = []
        self.seconds = 0.0

    def __call__(self, *, completion_ids: list[list[int]], answer: list[str], **_) -> list[float]:
        """Rewards of one batch of completions (token ids) against the rows' gold answers; TRL's other keywords
        (prompts, completions, dataset columns, trainer state) are not needed."""
        self.texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        scores = score(self.verifier, self.texts, list(answer), [len(ids) for ids in completion_ids], self.cfg)
        self.verdicts, self.rewards, self.seconds = scores.verdicts, scores.rewards.tolist(), scores.seconds
        return self.rewards


class _ThroughWrapper:
    """What `response_hidden` needs of a model, `.base_model(...)` and its cache argument's name, served by the
    training model's own forward."""

    def __init__(self, model):
        self._model = model
        self._inner = getattr(model, "module", model)  # DDP / DeepSpeed wrap it as `.module`
        self.cache_kwarg = cache_kwarg(self._inner)

    @property
    def training(self) -> bool:
        return self._inner.training

    @property
    def is_activation_checkpointing(self) -> bool:
        return activation_checkpointing(self._inner)

    def base_model(self, **kwargs):
        return self._model(**kwargs, sdpg_backbone=True)


class _Forwards:
    """The (possibly wrapped) training model as `sdpg.step.Forwards`; accelerate's autocast wraps its forward."""

    def __init__(self, model, weight: torch.Tensor):
        self._through, self.weight = _ThroughWrapper(model), weight

    def hidden(self, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
        return response_hidden(self._through, prompt_ids, prompt_mask, response_ids, response_mask)  # (B, T, H)

    def reference_hidden(self, *args) -> torch.Tensor:
        raise ValueError("the TRL-based trainer has no frozen-reference teacher (see SUPPORTED_NEEDS)")


@contextmanager
def _unshuffled():
    """TRL's generation-batch preparation without its shuffle of the sequences (TRL 1.16's module function)."""
    shuffle = trl_grpo.shuffle_sequence_dict
    trl_grpo.shuffle_sequence_dict = lambda batch: batch
    try:
        yield
    finally:
        trl_grpo.shuffle_sequence_dict = shuffle


@dataclass
class _Rollouts:
    """This process's share of a step's generation batch, in generation order."""

    rows: list[PromptRow]
    texts: list[str]
    rewards: list[float]
    verdicts: list
    adv: list[float]


@dataclass
class _Step:
    """What one training step (one generation, all its updates) has gathered so far."""

    started: float
    rollouts: _Rollouts | None = None
    metrics: dict = field(default_factory=dict)
    parts: list[Part] = field(default_factory=list)
    mini_norms: list[float] = field(default_factory=list)
    """each mini-batch's loss normaliser over all processes (response tokens, or sequences)"""
    gap: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    """|sampler - old| log-probs over response tokens: sum, count, max"""
    times: dict[str, float] = field(default_factory=lambda: {"rollout": 0.0, "reward": 0.0, "teacher": 0.0,
                                                             "records": 0.0})
    tokens: float = 0.0
    token_records: dict[int, dict] = field(default_factory=dict)
    error: str = ""
    """the NaN / inf a micro-step of the current update found ("" while none)"""
    grad_norms: list[float] = field(default_factory=list)
    """one per optimizer update so far"""
    skipped: list[str] = field(default_factory=list)
    """per update so far, why it was skipped ("" where it was applied)"""
    lr: float = 0.0
    """the learning rate of the step's updates"""
    beta_k: float = 0.0
    """the step's scheduled distillation weight"""


@dataclass(frozen=True)
class _Position:
    """Where a micro-step sits in its training step."""

    epoch: int
    mini: int
    """mini-batch index within the epoch"""

    @property
    def first_update(self) -> bool:
        return self.epoch == 0 and self.mini == 0


class SDPGTrainer(GRPOTrainer):
    """TRL's GRPO trainer computing our method's loss (`cfg.loss.method`) with the live privileged teacher.

    `cfg` is the engine's config (validated, and checked by `sdpg.scale.config.check_supported`); TRL's GRPOConfig is
    derived from it and `scale`. `rollout_func` is TRL's generation hook (see `GRPOTrainer`), e.g. to replay
    fixed completions.
    """

    def __init__(self, cfg: TrainConfig, *, model, tokenizer, train_rows: list[PromptRow], verifier: MathVerifier,
                 scale: ScaleConfig | None = None, callbacks=None, rollout_func=None):
        check_supported(cfg)
        self.sdpg_cfg = cfg
        self.method = get_method(cfg.loss.method)
        self.updates = updates_per_step(cfg)
        self.verifier_reward = VerifierReward(verifier, tokenizer, cfg)
        args = grpo_config(cfg, scale or ScaleConfig(), PartialState().num_processes)
        super().__init__(model=model, reward_funcs=[self.verifier_reward], args=args,
                         train_dataset=rows_to_dataset(train_rows, tokenizer), processing_class=tokenizer,
                         callbacks=callbacks, rollout_func=rollout_func)
        self._check_backend()
        add_backbone_switch(self.model)
        self._chat = bool(tokenizer.chat_template)
        self._current: _Step | None = None

    def _check_backend(self) -> None:
        zero3 = self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3
        if self.is_fsdp_enabled or zero3:
            raise ValueError("FSDP and DeepSpeed ZeRO-3 shard the LM head weight, which the fused full-vocabulary KL "
                             "reads whole in its forward and backward passes; use DDP or ZeRO-1/2")

    # ---------------- optimizer (the engine's) ----------------
    def get_decay_parameter_names(self, model) -> list[str]:
        """Every parameter decays, as with the engine's `AdamW(model.parameters(), weight_decay=...)`."""
        return [name for name, _ in model.named_parameters()]

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The engine's schedule: linear warmup over `optim.warmup_steps` training steps, then constant (TRL steps
        the scheduler per update; every update of a training step shares its rate)."""
        if self.lr_scheduler is None:
            warmup, updates = self.sdpg_cfg.optim.warmup_steps, self.updates
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda k: lr_warmup(k // updates, warmup_steps=warmup))
        return self.lr_scheduler

    # ---------------- rollouts ----------------
    def _prepare_inputs(self, generation_batch: dict) -> dict:
        """TRL's, with the generation batch kept in order: mini-batches are whole groups, as the engine's."""
        with _unshuffled():
            return super()._prepare_inputs(generation_batch)

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        """TRL's generation and scoring, then our advantages, the teacher prompts and the step's rollout metrics."""
        t0 = time.perf_counter()
        out = super()._generate_and_score_completions(inputs)
        device, g, n = self.accelerator.device, self.num_generations, len(inputs)
        reward = self.verifier_reward
        local_rewards = torch.tensor(reward.rewards, dtype=torch.float32, device=device)  # (B_local,)
        rewards = self.accelerator.gather(local_rewards).cpu()  # (B_all,)
        adv = group_advantages(rewards, g, scale=self.sdpg_cfg.loss.adv_scale)  # (B_all,)
        local = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
        out["advantages"] = adv[local].to(device)  # (B_local,)
        out["teacher_prompt_ids"], out["teacher_prompt_mask"] = self._teacher_prompts(inputs)  # (B_local, P')
        out["sdpg_index"] = torch.arange(n, device=device)  # (B_local,) the row within this process's batch
        step = self._current
        step.rollouts = _Rollouts([_row(x) for x in inputs], reward.texts, rewards[local].tolist(), reward.verdicts,
                                  adv[local].tolist())
        step.metrics = self._rollout_metrics(out, rewards, adv)
        step.mini_norms = self._mini_norms(out["completion_mask"])
        if self.sdpg_cfg.rollout.recompute_old_logp and self.updates > 1:
            out["old_per_token_logps"] = self._recompute_old_logp(out)  # (B_local, T)
        step.tokens = float(out["num_items_in_batch"])
        step.times["rollout"] = time.perf_counter() - t0
        step.times["reward"] = reward.seconds
        return out

    def _teacher_prompts(self, inputs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """Student text followed by the privileged context, tokenized as TRL tokenizes prompts, left-padded."""
        texts = [_prompt_text(x["prompt"]) + x["privileged_context"] for x in inputs]
        ids, _, _ = self._tokenize_prompts([_prompt(t, self._chat) for t in texts])
        limit = self.sdpg_cfg.rollout.max_prompt_tokens
        longest = max(range(len(ids)), key=lambda i: len(ids[i]))
        if len(ids[longest]) > limit:
            raise ValueError(f"prompt {longest} has {len(ids[longest])} tokens with its privileged context, more than "
                             f"rollout.max_prompt_tokens={limit}: {texts[longest][:80]!r}...")
        device = self.accelerator.device
        tensors = [torch.tensor(x, device=device) for x in ids]
        prompt_ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left")  # (B_local, P')
        prompt_mask = pad([torch.ones_like(x) for x in tensors], padding_value=0, padding_side="left")  # (B_local, P')
        return prompt_ids, prompt_mask

    def _rollout_metrics(self, out: dict, rewards: torch.Tensor, adv: torch.Tensor) -> dict:
        """The engine's per-step rollout metrics (`sdpg.step.rollout_metrics`) over all processes' sequences."""
        ids, mask = out["completion_ids"], out["completion_mask"]
        lengths = self.accelerator.gather(mask.sum(-1)).float()  # (B_all,)
        is_eos = torch.isin(ids, torch.tensor(self.eos_token_ids, device=ids.device)) & mask.bool()  # (B_local, T)
        truncated = self.accelerator.gather(~is_eos.any(-1)).float()  # (B_all,)
        return {**rollout_metrics(gather_object(self.verifier_reward.verdicts), rewards, adv, lengths.cpu(),
                                  truncated.cpu(), self.num_generations), "adv/resample_rounds": 0}

    @torch.no_grad()
    def _recompute_old_logp(self, out: dict) -> torch.Tensor:
        """The current model's log-probs of the sampled tokens, computed as the engine computes them (TRL's own
        recomputation positions left-padded prompts differently), micro-batch by micro-batch: (B_local, T)."""
        model = self.model_wrapped if self.model_wrapped is not None else self.model
        fw = _Forwards(model, lm_head_weight(self.accelerator.unwrap_model(model)))
        resp, rmask = out["completion_ids"], out["completion_mask"]
        per, parts = self.args.per_device_train_batch_size, []
        for lo in range(0, resp.shape[0], per):
            sl = slice(lo, lo + per)
            h = fw.hidden(out["prompt_ids"][sl], out["prompt_mask"][sl], resp[sl], rmask[sl])  # (b, T, H)
            parts.append(token_logp(h, fw.weight, resp[sl], temperature=self.sdpg_cfg.rollout.temperature) * rmask[sl])
        return torch.cat(parts)  # (B_local, T)

    def _mini_norms(self, mask: torch.Tensor) -> list[float]:
        """Each mini-batch's loss normaliser summed over processes: response tokens (token-mean) or sequences."""
        per = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps
        units = mask.sum(-1).float() if self.sdpg_cfg.loss.agg == "token-mean" else torch.ones(mask.shape[0],
                                                                                              device=mask.device)
        local = units.view(-1, per).sum(-1)  # (mini-batches,)
        return self.accelerator.reduce(local, reduction="sum").tolist()

    # ---------------- update ----------------
    def training_step(self, model, inputs, num_items_in_batch):
        """TRL's micro-step; the first of a training step opens its record (`log` closes it)."""
        cycle = self.args.steps_per_generation * self.num_iterations
        if self._step % cycle == 0:
            self._current = _Step(started=time.perf_counter())
        return super().training_step(model, inputs, num_items_in_batch)

    def _clip_grad_norm(self, model):
        """TRL's clipping, then the engine's non-finite-update rule (`sdpg.step.skip_reason`): a skipped update's
        gradients are dropped, so the optimizer leaves weights and moments alone (every process sees the same
        all-reduced norm, and a micro-step's NaN reaches that norm, so all processes skip together)."""
        norm = float(super()._clip_grad_norm(model))
        step = self._current
        reason = skip_reason(step.error, norm)
        if reason:
            for p in model.parameters():
                p.grad = None
        if not step.grad_norms:
            step.lr = self._get_learning_rate()
        step.grad_norms.append(norm)
        step.skipped.append(reason)
        step.error = ""
        return norm

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """TRL's log of an update; after a training step's last update, first the step's metrics and records go to
        the callbacks (`_close_step`)."""
        step = self._current
        if step is not None and len(step.grad_norms) == self.updates:
            self._current = None
            self._close_step(step)
        super().log(logs, start_time)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Our method's loss on one micro-batch by the shared micro-step, scaled by its share of the mini-batch."""
        if return_outputs:
            raise ValueError("SDPGTrainer.compute_loss returns the loss only (return_outputs=True is not supported)")
        step, pos = self._current, self._position()
        weight = lm_head_weight(self.accelerator.unwrap_model(model))
        mask = inputs["completion_mask"].float()  # (B, T)
        share = self._share(mask, pos)
        ctx = self._context()
        step.beta_k = ctx.beta_k
        try:
            result = micro_step(_Forwards(model, weight), self._micro_batch(inputs, pos), ctx)
        except NonFiniteError as exc:  # the update is skipped (`_clip_grad_norm`): its gradient becomes NaN
            step.error = str(exc)
            return float("nan") * sum(p.sum() for p in model.parameters() if p.requires_grad)
        step.parts.append(Part(result.stats, share / self.updates,
                               float(mask.sum()) / (self.num_iterations * step.tokens),
                               mask.shape[0] / (self.num_iterations * self.args.generation_batch_size),
                               1.0 / self.num_iterations))
        step.times["teacher"] += result.teacher_s
        if pos.epoch == 0:
            self._add_gap(inputs, result.logp if pos.first_update else inputs.get("old_per_token_logps"))
            self._record_tokens(inputs, result.records, weight)
        return result.loss * share * self.accelerator.num_processes

    def _position(self) -> _Position:
        """The epoch and mini-batch of the micro-step TRL is about to run (`_step` counts micro-steps)."""
        in_generation = self._step % self.args.steps_per_generation
        return _Position(self._step // self.args.steps_per_generation % self.num_iterations,
                         in_generation // self.args.gradient_accumulation_steps)

    def _micro_batch(self, inputs: dict, pos: _Position) -> MicroBatch:
        """TRL's micro-batch as the shared step's input."""
        index = inputs["sdpg_index"].tolist()
        mask = inputs["completion_mask"].float()  # (B, T)
        recorded = min(self.sdpg_cfg.run.record_groups, len(self._current.rollouts.rows) // self.num_generations)
        record = self.accelerator.is_main_process and pos.epoch == 0
        return MicroBatch(
            inputs["prompt_ids"], inputs["prompt_mask"], inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"],
            inputs["completion_ids"], inputs["completion_mask"], inputs["advantages"],
            torch.tensor([self._current.rollouts.verdicts[i].correct for i in index]),
            old_logp=self._old_logp(inputs, pos),
            refs={Input.REF_LOGP.value: inputs["ref_per_token_logps"] * mask}
            if self.method.uses_reference(self.sdpg_cfg.loss) else {},
            record_rows=tuple(j for j, i in enumerate(index) if record and i < recorded * self.num_generations))

    def _old_logp(self, inputs: dict, pos: _Position) -> torch.Tensor | None:
        """The PPO ratio's old log-probs (None: the micro-step's own). Recomputed: the first update's own, then TRL's
        recomputation; else the sampler's where it scored a token, TRL's or the own elsewhere."""
        mask = inputs["completion_mask"].float()  # (B, T)
        old = inputs.get("old_per_token_logps")
        if self.sdpg_cfg.rollout.recompute_old_logp:
            return None if pos.first_update or old is None else old * mask
        sampled = inputs.get("sampling_per_token_logps")
        if sampled is None or (old is None and bool(torch.isnan(sampled).any())):  # unscored tokens: the current's
            return None if old is None else old * mask
        return torch.where(torch.isnan(sampled), old if old is not None else sampled, sampled) * mask  # (B, T)

    def _share(self, mask: torch.Tensor, pos: _Position) -> float:
        """This micro-batch's share of its mini-batch's normaliser over all processes."""
        units = float(mask.sum()) if self.sdpg_cfg.loss.agg == "token-mean" else float(mask.shape[0])
        return units / self._current.mini_norms[pos.mini]

    def _add_gap(self, inputs: dict, recomputed: torch.Tensor | None) -> None:
        """Add |sampler - recomputed old| log-probs of this micro-batch to the step's gap (recomputation on, and a
        sampler that gave its log-probs)."""
        sampled = inputs.get("sampling_per_token_logps")
        if not self.sdpg_cfg.rollout.recompute_old_logp or sampled is None or recomputed is None:
            return
        keep = inputs["completion_mask"].bool() & ~torch.isnan(sampled)  # (B, T)
        gap = (sampled - recomputed).abs()[keep]  # (N,)
        acc = self._current.gap
        acc[0], acc[1], acc[2] = acc[0] + float(gap.sum()), acc[1] + gap.numel(), max(acc[2], float(gap.max()))

    def _context(self) -> StepContext:
        """The step's shared context; TRL's global step counts optimizer updates."""
        return step_context(self.sdpg_cfg, self.method, self.state.global_step // self.updates)

    def _record_tokens(self, inputs: dict, records: dict[int, dict], weight: torch.Tensor) -> None:
        """Per-token records of the micro-batch's recorded rows (process 0, first epoch)."""
        t0, index = time.perf_counter(), inputs["sdpg_index"].tolist()
        sampled = inputs.get("sampling_per_token_logps")  # (B, T), NaN where the sampler gave none
        for j, args in records.items():
            if sampled is not None:
                args["sampler_logp"] = sampled[j, :args["ids"].shape[0]]  # (n,)
        built = token_records(self._tokenizer, weight, self.sdpg_cfg.rollout.temperature, list(records.values()))
        for j, record in zip(records, built):
            self._current.token_records[index[j]] = record
        self._current.times["records"] += time.perf_counter() - t0

    def _close_step(self, step: _Step) -> None:
        """The step's metrics row (`sdpg.step.step_metrics`, statistics reduced over micro-batches, updates and
        processes) and recorded groups, handed to the callbacks after the step's last optimizer update."""
        device = self.accelerator.device

        def all_reduce(values: list[float]) -> list[float]:
            return self.accelerator.reduce(torch.tensor(values, dtype=torch.float64, device=device), "sum").tolist()

        stats = reduce_step(step.parts, all_reduce)
        gap_sum, gap_count = all_reduce(step.gap[:2])
        t0 = time.perf_counter()
        gates = record_gates(self.method, self.sdpg_cfg.loss, step.rollouts.adv,
                             [v.correct for v in step.rollouts.verdicts])
        groups = group_records(step.rollouts.rows[::self.num_generations], step.rollouts.texts, step.rollouts.rewards,
                               step.rollouts.verdicts, step.rollouts.adv, gates, step.token_records,
                               self.num_generations) if self.accelerator.is_main_process else []
        step.times["records"] += time.perf_counter() - t0
        elapsed = time.perf_counter() - step.started
        metrics = step_metrics(step.metrics, teacher_stats(stats, self.method, self.sdpg_cfg.loss, groups),
                               beta_k=step.beta_k, grad_norms=step.grad_norms,
                               skipped=[bool(r) for r in step.skipped], lr=step.lr, tokens=step.tokens,
                               seconds={**step.times, "update": elapsed - step.times["rollout"] - step.times["records"],
                                        "step": elapsed})
        if gap_count:
            gap_max = self.accelerator.reduce(torch.tensor(step.gap[2], device=device), "max")
            metrics |= {"rollout/logp_gap_mean": gap_sum / gap_count, "rollout/logp_gap_max": float(gap_max)}
        for callback in self.callback_handler.callbacks:
            handler = getattr(callback, "on_sdpg_step", None)
            if handler is not None:
                handler(self.args, self.state, self.control, step=self.state.global_step // self.updates,
                        metrics=metrics, groups=groups, skipped=[r for r in step.skipped if r], updates=self.updates)


def _prompt(text: str, chat: bool):
    """A prompt in TRL's dataset form: one user message, or plain text for a tokenizer without a chat template."""
    return [{"role": "user", "content": text}] if chat else text


def _prompt_text(prompt) -> str:
    """The text of a prompt in the form `_prompt` makes."""
    return prompt[-1]["content"] if isinstance(prompt, list) else prompt


def _row(example: dict) -> PromptRow:
    """The PromptRow a dataset example came from."""
    return PromptRow(prompt=_prompt_text(example["prompt"]), context=example["privileged_context"],
                     answer=example["answer"], data_source=example["data_source"])
