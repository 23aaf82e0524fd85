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
  gathered rewards, the teacher prompts, rollout metrics), `compute_loss` (our method's loss on one micro-batch),
  `training_step` (closes a step's metrics), `create_scheduler` / `get_decay_parameter_names` (the engine's warmup and
  weight-decay set).
- The loss is the engine's, called the engine's way: `sdpg.forward.response_hidden` for student and teacher hidden
  states, `fused_self_distill` for the full-vocabulary KL, log-prob and entropy (no (B, T, V) tensor; the
  materialised `logits_self_distill` with `loss.fused_kl = False`), and `sdpg.methods` for the loss. The teacher
  is the current model with no gradient on the student text followed by the row's privileged context and the very
  same response tokens.
- Old log-probs: the sampler's when vLLM sampled (its log-probs after temperature), else the current ones (one
  update per batch, ratio 1), as the engine's sampler gives them.
- Relies on TRL 1.16 internals besides the public hooks (`_generate_and_score_completions`, `_tokenize_prompts`,
  `_step`): the version is pinned in requirements.txt.
- Both forwards run through the (possibly DDP- or DeepSpeed-wrapped) model's own forward with the
  `sdpg_backbone` switch (`add_backbone_switch`), so the wrapper's hooks see them. The fused KL runs after the
  forward, outside accelerate's autocast (which wraps the forward only), and computes in float32 itself.
- Each micro-batch loss is scaled by its share of the step's normaliser times the world size (tokens for
  `token-mean`, sequences otherwise): summed over micro-batches and averaged over processes by DDP / DeepSpeed, the
  gradient is exactly the full-batch one, as in the engine.
- Records: per-step metrics carry the engine's keys, reduced over processes; per-token rollout records come from
  process 0's first whole groups. They reach callbacks as an `on_sdpg_step(args, state, control, metrics, groups)`
  event (see `sdpg.scale.records`), before the optimizer step; gradient norm and learning rate come with TRL's log.
"""
from __future__ import annotations

import functools
import time
import types
from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets import Dataset
from trl import GRPOTrainer
from trl.trainer.utils import pad

from sdpg.config import TrainConfig
from sdpg.data import PromptRow
from sdpg.forward import lm_head_weight, logits_self_distill, response_hidden, token_logp
from sdpg.losses import beta_schedule, fused_self_distill, group_advantages
from sdpg.methods import LossInputs, get_method
from sdpg.reward import MathVerifier, overlong_penalty, reward_metrics
from sdpg.scale.config import ScaleConfig, check_supported, grpo_config
from sdpg.trainer import group_record, lr_warmup, token_record

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

    Completions are decoded from their token ids as the engine's rollout decodes them. The last call's texts,
    rewards and verdicts stay readable (the trainer's records and reward metrics use them).
    """

    def __init__(self, verifier: MathVerifier, tokenizer, cfg: TrainConfig):
        self.verifier, self.tokenizer, self.cfg = verifier, tokenizer, cfg
        self.texts: list[str] = []
        self.rewards: list[float] = []
        self.verdicts: list = []

    def __call__(self, *, completion_ids: list[list[int]], answer: list[str], **_) -> list[float]:
        """Rewards of one batch of completions (token ids) against the rows' gold answers; TRL's other keywords
        (prompts, completions, dataset columns, trainer state) are not needed."""
        self.texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        self.verdicts = self.verifier.score(self.texts, list(answer))
        rc = self.cfg.reward
        penalty = overlong_penalty([len(ids) for ids in completion_ids], self.cfg.rollout.max_new_tokens,
                                   rc.overlong_buffer, rc.overlong_penalty)
        self.rewards = [v.reward + p for v, p in zip(self.verdicts, penalty, strict=True)]
        return self.rewards


class _ThroughWrapper:
    """What `response_hidden` needs of a model, `.base_model(...)`, served by the training model's own forward."""

    def __init__(self, model):
        self._model = model

    def base_model(self, **kwargs):
        return self._model(**kwargs, sdpg_backbone=True)


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
    """What one optimizer step has gathered so far."""

    started: float
    rollouts: _Rollouts | None = None
    metrics: dict = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=lambda: {"rollout": 0.0, "teacher": 0.0})
    tokens: float = 0.0
    token_records: dict[int, dict] = field(default_factory=dict)


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
        """The engine's schedule: linear warmup over `optim.warmup_steps` steps, then constant."""
        if self.lr_scheduler is None:
            warmup = self.sdpg_cfg.optim.warmup_steps
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer,
                                                                  functools.partial(lr_warmup, warmup_steps=warmup))
        return self.lr_scheduler

    # ---------------- rollouts ----------------
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
        out["sdpg_index"] = torch.arange(n, device=device)  # (B_local,) survives TRL's shuffle and split
        step = self._current
        step.rollouts = _Rollouts([_row(x) for x in inputs], reward.texts, rewards[local].tolist(), reward.verdicts,
                                  adv[local].tolist())
        step.metrics = self._rollout_metrics(out, rewards, adv)
        step.tokens = float(out["num_items_in_batch"])
        step.times["rollout"] = time.perf_counter() - t0
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
        """The engine's per-step rollout metrics over all processes' sequences."""
        g = self.num_generations
        ids, mask = out["completion_ids"], out["completion_mask"]
        lengths = self.accelerator.gather(mask.sum(-1)).float()  # (B_all,)
        is_eos = torch.isin(ids, torch.tensor(self.eos_token_ids, device=ids.device)) & mask.bool()  # (B_local, T)
        has_eos = is_eos.any(-1)  # (B_local,)
        truncated = self.accelerator.gather(~has_eos).float()  # (B_all,)
        return {**reward_metrics(gather_object(self.verifier_reward.verdicts)),
                "reward/mean": float(rewards.mean()), "adv/values": [round(a, 4) for a in adv.tolist()],
                "adv/zero_var_groups": float((rewards.view(-1, g).std(-1, unbiased=False) == 0).float().mean()),
                "response/length_mean": float(lengths.mean()), "response/truncated": float(truncated.mean())}

    # ---------------- update ----------------
    def training_step(self, model, inputs, num_items_in_batch):
        """TRL's micro-step; the first of a step opens its record, the last closes it."""
        if self._step % self.args.gradient_accumulation_steps == 0:
            self._current = _Step(started=time.perf_counter())
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._step % self.current_gradient_accumulation_steps == 0:
            self._close_step()
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Our method's loss on one micro-batch, scaled by its share of the step (see the module docstring)."""
        if return_outputs:
            raise ValueError("SDPGTrainer.compute_loss returns the loss only (return_outputs=True is not supported)")
        cfg, step = self.sdpg_cfg, self._current
        temp = cfg.rollout.temperature
        resp, rmask = inputs["completion_ids"], inputs["completion_mask"]
        mask = rmask.float()  # (B, T)
        sel = rmask.bool()  # (B, T)
        student_h, teacher_h = self._hidden_states(model, inputs)  # (B, T, H) each
        weight = lm_head_weight(self.accelerator.unwrap_model(model))
        distill = fused_self_distill if cfg.loss.fused_kl else logits_self_distill
        kl, logp, ent = distill(student_h[sel], teacher_h[sel], weight, resp[sel], temperature=temp)  # (N,)
        kl_mat = torch.zeros_like(mask).masked_scatter(sel, kl)  # (B, T)
        logp_mat = torch.zeros_like(mask).masked_scatter(sel, logp)  # (B, T)
        old_logp = self._old_logp(inputs, logp_mat) * mask  # (B, T)
        ref_logp = inputs["ref_per_token_logps"] * mask if self.method.uses_reference(cfg.loss) else None  # (B, T)
        index = inputs["sdpg_index"].tolist()
        loss_inputs = LossInputs(
            logp=logp_mat, old_logp=old_logp, adv=inputs["advantages"], mask=mask, distill_kl=kl_mat,
            temperature=temp, correct=torch.tensor([step.rollouts.verdicts[i].correct for i in index]),
            ref_logp=ref_logp, step=self.state.global_step,
            teacher_logp=token_logp(teacher_h, weight, resp) * mask if "teacher_logp" in self.method.needs else None)
        loss, stats = self.method.loss(loss_inputs, cfg.loss, self._beta_k())
        stats["entropy/mean"] = float(ent.detach().mean())
        share = self._share(mask, inputs)
        for k, v in stats.items():
            step.stats[k] = step.stats.get(k, 0.0) + float(v) * share
        if self.accelerator.is_main_process:
            ent_mat = torch.zeros_like(mask).masked_scatter(sel, ent.detach())  # (B, T)
            self._record_tokens(index, student_h.detach(), teacher_h, resp, rmask, weight,
                                (kl_mat.detach(), logp_mat.detach(), ent_mat, old_logp, ref_logp))
        return loss * share

    def _hidden_states(self, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Final hidden states predicting each response token: the student's (gradient flows) on the student prompt,
        the teacher's (no gradient) on the privileged one, both through `model`'s own forward. (B, T, H) each."""
        through = _ThroughWrapper(model)
        resp, rmask = inputs["completion_ids"], inputs["completion_mask"]
        t0 = time.perf_counter()
        with torch.no_grad():
            teacher_h = response_hidden(through, inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"],
                                        resp, rmask)  # (B, T, H)
        self._current.times["teacher"] += time.perf_counter() - t0
        student_h = response_hidden(through, inputs["prompt_ids"], inputs["prompt_mask"], resp, rmask)  # (B, T, H)
        return student_h, teacher_h

    def _beta_k(self) -> float:
        """The scheduled distillation weight at this step (0 for methods that only monitor the KL)."""
        lc = self.sdpg_cfg.loss
        if not self.method.distills:
            return 0.0
        return beta_schedule(self.state.global_step + 1, self.sdpg_cfg.run.steps, lc.beta, lc.beta_warmup,
                             lc.beta_decay)

    @staticmethod
    def _old_logp(inputs: dict, logp: torch.Tensor) -> torch.Tensor:
        """The sampler's log-probs when an external sampler (vLLM) gave them, else TRL's old log-probs, else the
        current ones (one update per batch: ratio 1). Tokens the sampler could not score (NaN) take the current."""
        sampled = inputs.get("sampling_per_token_logps")
        if sampled is not None:
            return torch.where(torch.isnan(sampled), logp.detach(), sampled)  # (B, T)
        old = inputs.get("old_per_token_logps")
        return logp.detach() if old is None else old  # (B, T)

    def _share(self, mask: torch.Tensor, inputs: dict) -> float:
        """This micro-batch's share of the step's normaliser, times the world size (DDP averages over processes)."""
        world = self.accelerator.num_processes
        if self.sdpg_cfg.loss.agg == "token-mean":
            return float(mask.sum()) * world / float(inputs["num_items_in_batch"])
        return mask.shape[0] * world / self.args.generation_batch_size

    def _record_tokens(self, index: list[int], student_h, teacher_h, resp, rmask, weight, mats) -> None:
        """Per-token records for the micro-batch's rows that belong to the recorded groups (process 0 only)."""
        g = self.num_generations
        recorded = min(self.sdpg_cfg.run.record_groups, len(self._current.rollouts.rows) // g) * g
        kl, logp, ent, old_logp, ref_logp = mats
        for j, i in enumerate(index):
            if i >= recorded:
                continue
            n = int(rmask[j].sum())
            self._current.token_records[i] = token_record(
                self._tokenizer, weight, self.sdpg_cfg.rollout.temperature, student_h[j, :n], teacher_h[j, :n],
                resp[j, :n], kl=kl[j, :n], logp=logp[j, :n], entropy=ent[j, :n], old_logp=old_logp[j, :n],
                ref_logp=None if ref_logp is None else ref_logp[j, :n])

    def _close_step(self) -> None:
        """Reduce the step's loss statistics over processes and hand metrics and groups to the callbacks."""
        step = self._current
        keys = sorted(step.stats)
        values = torch.tensor([step.stats[k] for k in keys], dtype=torch.float64, device=self.accelerator.device)
        totals = (self.accelerator.reduce(values, reduction="sum") / self.accelerator.num_processes).tolist()
        elapsed = time.perf_counter() - step.started
        metrics = {**step.metrics, **dict(zip(keys, totals)), "beta/effective": self._beta_k(),
                   "perf/tokens_per_s": step.tokens / elapsed, "time/rollout": step.times["rollout"],
                   "time/teacher": step.times["teacher"],
                   "time/update": elapsed - step.times["rollout"] - step.times["teacher"], "time/step": elapsed}
        groups = self._group_records() if self.accelerator.is_main_process else []
        for callback in self.callback_handler.callbacks:
            handler = getattr(callback, "on_sdpg_step", None)
            if handler is not None:
                handler(self.args, self.state, self.control, metrics=metrics, groups=groups)

    def _group_records(self) -> list[dict]:
        step, g = self._current, self.num_generations
        ro, records = step.rollouts, step.token_records
        return [group_record(gi, ro.rows[gi * g], ro.texts[gi * g:(gi + 1) * g], ro.rewards[gi * g:(gi + 1) * g],
                             ro.verdicts[gi * g:(gi + 1) * g], ro.adv[gi * g:(gi + 1) * g],
                             [records[i] for i in range(gi * g, (gi + 1) * g)])
                for gi in range(len(records) // g)]


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
