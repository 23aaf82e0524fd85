"""The SDPG update loop: rollout -> reward -> advantage -> losses -> update -> records.

Legend: B sequences (prompts x G), G group size, P prompt tokens, T response tokens, H hidden, V vocabulary, N tokens.

Design choices:
- One optimizer step per rollout batch (on-policy, as in the paper), with gradient accumulation over
  micro-batches. Each micro-batch loss is weighted by its share of the batch normaliser (tokens for
  `token-mean`, sequences otherwise), so accumulation gives exactly the full-batch loss; the step's
  metrics combine the micro-batches' by what each averages over (`combine_micro_stats`), so they do not
  change with the micro-batch size either.
- The teacher is the current model with no gradient on the privileged prompt and the very same response
  tokens; KL, student log-probs and entropy come from `fused_self_distill` on final hidden states, so no
  `(B, T, V)` tensor is ever built. GRPO runs compute the same KL for monitoring with beta = 0.
- A non-finite loss or gradient norm skips the optimizer step and is reported (`step/skipped`).
- Real models: the rollout engine is the one `rollout.engine` names (`make_engine`; vLLM gets the weights
  after every step); micro-batches hold `optim.micro_batch_tokens` worth of padded sequences when set;
  model forwards run under bfloat16 autocast with `model.autocast` (the KL and the backward stay outside
  it); `loss.fused_kl = False` swaps in the materialised-logits KL, the baseline the fused one is measured
  against. Gradients are freed right after the optimizer step, before the next rollout needs the memory.
- The trainer only emits records; what is shown, and how, is the views' business.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

import torch

from sdpg.config import TrainConfig
from sdpg.data import PromptRow
from sdpg.forward import lm_head_weight, logits_self_distill, response_hidden, token_logp, vocab_scan
from sdpg.losses import NonFiniteError, beta_schedule, fused_self_distill, group_advantages
from sdpg.methods import LossInputs, get_method
from sdpg.models import render_prompts
from sdpg.records import RecordStream
from sdpg.reward import MathVerifier, overlong_penalty, reward_metrics
from sdpg.rollout import HFRolloutEngine, Rollout, RolloutEngine
from sdpg.vocab import token_strings

TOPK = 5


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


@dataclass
class Batch:
    """One step's scored rollouts, laid out group after group."""

    rows: list[PromptRow]
    rollout: Rollout
    verdicts: list
    rewards: torch.Tensor  # (B,)
    adv: torch.Tensor  # (B,)
    zero_var_groups: float
    resample_rounds: int


class Trainer:
    def __init__(self, cfg: TrainConfig, *, model, tokenizer, ref_model, train_rows: list[PromptRow],
                 val_rows: list[PromptRow], records: RecordStream, verifier: MathVerifier):
        self.cfg, self.model, self.tokenizer, self.ref_model = cfg, model, tokenizer, ref_model
        self.train_rows, self.val_rows, self.records, self.verifier = train_rows, val_rows, records, verifier
        self.device = next(model.parameters()).device
        self.engine = make_engine(cfg, model, tokenizer)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda k: lr_warmup(k, o.warmup_steps))
        self.sampler = PromptSampler(len(train_rows), cfg.run.seed)
        self.method = get_method(cfg.loss.method)
        self.step = 0

    # ---------------- sampling ----------------
    def _render(self, texts: list[str]) -> list[str]:
        return render_prompts(self.tokenizer, texts, enable_thinking=self.cfg.model.enable_thinking)

    def _score(self, rows: list[PromptRow], rollout: Rollout) -> tuple[list, torch.Tensor]:
        g = rollout.group_size
        verdicts = self.verifier.score(rollout.texts, [row.answer for row in rows for _ in range(g)])
        rewards = torch.tensor([v.reward for v in verdicts], dtype=torch.float32)  # (B,)
        rc = self.cfg.reward
        if rc.overlong_buffer:
            rewards += torch.tensor(overlong_penalty(rollout.lengths.tolist(), self.cfg.rollout.max_new_tokens,
                                                     rc.overlong_buffer, rc.overlong_penalty))  # (B,)
        return verdicts, rewards

    def sample_batch(self) -> Batch:
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
        return Batch(rows, rollout, verdicts, rewards, adv, zero_var, rounds)

    # ---------------- update ----------------
    def train_step(self) -> dict:
        """One rollout batch, one optimizer step; emits metrics and rollout records, returns the metrics."""
        cfg, lc = self.cfg, self.cfg.loss
        t0 = time.perf_counter()
        batch = self.sample_batch()
        t_sample = time.perf_counter() - t0
        ro, g = batch.rollout, batch.rollout.group_size
        teacher_ids, teacher_mask = (t.to(self.device) for t in self.engine.encode_prompts(
            self._render([row.teacher_prompt for row in batch.rows for _ in range(g)])))  # (B, P')
        beta_k = beta_schedule(self.step, cfg.run.steps, lc.beta, lc.beta_warmup, lc.beta_decay) if self.method.distills else 0.0
        mask = ro.response_mask.float()  # (B, T)
        nb = mask.shape[0]
        recorded = set(range(min(cfg.run.record_groups, nb // g) * g))
        token_records: dict[int, dict] = {}
        parts: list[tuple[dict, dict[str, float]]] = []
        times = {"teacher": 0.0, "reference": 0.0, "update": 0.0}
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        skip_reason = ""
        rows = self._micro_rows(teacher_ids.shape[1] + mask.shape[1])
        for lo in range(0, nb, rows):
            sl = slice(lo, min(nb, lo + rows))
            share = float(mask[sl].sum() / mask.sum()) if lc.agg == "token-mean" else (sl.stop - sl.start) / nb
            try:
                stats = self._micro_step(batch, sl, teacher_ids[sl], teacher_mask[sl], beta_k, share, times,
                                         {i - lo: i for i in recorded if sl.start <= i < sl.stop}, token_records)
            except NonFiniteError as exc:  # a NaN/inf step is skipped and reported, never applied
                skip_reason = str(exc)
                break
            parts.append((stats, {"loss": share, "tokens": float(mask[sl].sum() / mask.sum()),
                                  "rows": (sl.stop - sl.start) / nb}))
        t4 = time.perf_counter()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip))
        if not skip_reason and not math.isfinite(grad_norm):
            skip_reason = f"gradient norm is {grad_norm}"
        skipped = bool(skip_reason)
        if skipped:
            self.records.emit_event("step_skipped", step=self.step + 1, reason=skip_reason)
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)  # gradients are not needed until the next update: free them
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.engine.sync_weights(self.model)
        times["update"] += time.perf_counter() - t4
        step_time = time.perf_counter() - t0
        metrics = {
            **reward_metrics(batch.verdicts), **combine_micro_stats(parts),
            "reward/mean": float(batch.rewards.mean()),
            "adv/values": [round(a, 4) for a in batch.adv.tolist()],
            "adv/zero_var_groups": batch.zero_var_groups, "adv/resample_rounds": batch.resample_rounds,
            "response/length_mean": float(ro.lengths.float().mean()),
            "response/truncated": float(ro.truncated.float().mean()),
            "grad/norm": grad_norm, "optim/lr": lr, "beta/effective": beta_k, "step/skipped": float(skipped),
            "perf/tokens_per_s": float(mask.sum()) / step_time,
            "time/rollout": t_sample, "time/teacher": times["teacher"], "time/reference": times["reference"],
            "time/update": times["update"], "time/step": step_time,
        }
        self.step += 1
        self.records.emit_rollouts(self.step, self._group_records(batch, token_records))
        return metrics

    def _micro_step(self, batch: Batch, sl: slice, teacher_ids, teacher_mask, beta_k: float, share: float,
                    times: dict, recorded: dict[int, int], token_records: dict[int, dict]) -> dict:
        """Forward the teacher, reference and student on one micro-batch and accumulate its gradient."""
        ro, temp = batch.rollout, self.cfg.rollout.temperature
        resp, rmask = ro.response_ids[sl], ro.response_mask[sl]
        mask = rmask.float()  # (b, T)
        sel = rmask.bool()  # (b, T)
        weight = lm_head_weight(self.model)
        t1 = time.perf_counter()
        with torch.no_grad():
            teacher_h = self._hidden(self.model, teacher_ids, teacher_mask, resp, rmask)  # (b, T, H)
        t2 = time.perf_counter()
        refs = self._reference_inputs(ro, sl, teacher_ids, teacher_mask)
        t3 = time.perf_counter()
        student_h = self._hidden(self.model, ro.prompt_ids[sl], ro.prompt_mask[sl], resp, rmask)  # (b, T, H)
        distill = fused_self_distill if self.cfg.loss.fused_kl else logits_self_distill
        kl, logp, ent = distill(student_h[sel], teacher_h[sel], weight, resp[sel], temperature=temp)  # (N,)
        kl_mat = torch.zeros_like(mask).masked_scatter(sel, kl)  # (b, T)
        logp_mat = torch.zeros_like(mask).masked_scatter(sel, logp)  # (b, T)
        teacher_logp = token_logp(teacher_h, weight, resp) * mask if "teacher_logp" in self.method.needs else None
        if "ref_distill_kl" in self.method.needs:
            with torch.no_grad():
                ref_h = self._hidden(self.ref_model, teacher_ids, teacher_mask, resp, rmask)  # (b, T, H)
            ref_kl, _, _ = distill(student_h[sel], ref_h[sel], weight, resp[sel], temperature=temp,
                                              teacher_weight=lm_head_weight(self.ref_model))  # (N,)
            refs["ref_distill_kl"] = torch.zeros_like(mask).masked_scatter(sel, ref_kl)  # (b, T)
        inputs = LossInputs(logp=logp_mat, old_logp=ro.old_logp[sl], adv=batch.adv[sl].to(self.device), mask=mask,
                            distill_kl=kl_mat, temperature=temp, teacher_logp=teacher_logp,
                            correct=torch.tensor([v.correct for v in batch.verdicts[sl]], device=self.device),
                            step=self.step, **refs)
        loss, stats = self.method.loss(inputs, self.cfg.loss, beta_k)
        (loss * share).backward()
        stats["entropy/mean"] = float(ent.detach().mean())
        ent_mat = torch.zeros_like(mask).masked_scatter(sel, ent.detach())  # (b, T)
        for j, i in recorded.items():
            token_records[i] = self._token_record(j, student_h.detach(), teacher_h, resp, rmask, kl_mat.detach(),
                                                  logp_mat.detach(), ent_mat, ro.old_logp[sl], refs.get("ref_logp"))
        times["teacher"] += t2 - t1
        times["reference"] += t3 - t2
        times["update"] += time.perf_counter() - t3
        return stats

    def _micro_rows(self, seq_tokens: int) -> int:
        """Sequences per forward/backward pass: `optim.micro_batch_tokens` worth of padded `seq_tokens`
        (at least one sequence), else `optim.micro_batch`."""
        budget = self.cfg.optim.micro_batch_tokens
        return max(1, budget // seq_tokens) if budget else self.cfg.optim.micro_batch

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
        if "ref_logp" in self.method.needs and self.cfg.loss.alpha > 0:
            h = self._hidden(self.ref_model, ro.prompt_ids[sl], ro.prompt_mask[sl], resp, rmask)  # (b, T, H)
            out["ref_logp"] = token_logp(h, lm_head_weight(self.ref_model), resp, temperature=temp) * rmask
        if "ref_teacher_logp" in self.method.needs:
            h = self._hidden(self.ref_model, teacher_ids, teacher_mask, resp, rmask)  # (b, T, H)
            out["ref_teacher_logp"] = token_logp(h, lm_head_weight(self.ref_model), resp) * rmask
        return out

    def _token_record(self, j, student_h, teacher_h, resp, rmask, kl_mat, logp_mat, ent_mat, old_logp, ref_logp) -> dict:
        """Per-token arrays for one recorded response (row j of the micro-batch)."""
        n = int(rmask[j].sum())
        return token_record(self.tokenizer, lm_head_weight(self.model), self.cfg.rollout.temperature,
                            student_h[j, :n], teacher_h[j, :n], resp[j, :n], kl=kl_mat[j, :n], logp=logp_mat[j, :n],
                            entropy=ent_mat[j, :n], old_logp=old_logp[j, :n],
                            ref_logp=None if ref_logp is None else ref_logp[j, :n])

    def _group_records(self, batch: Batch, token_records: dict[int, dict]) -> list[dict]:
        g = batch.rollout.group_size
        return [group_record(gi, batch.rows[gi], batch.rollout.texts[gi * g:(gi + 1) * g],
                             batch.rewards[gi * g:(gi + 1) * g].tolist(), batch.verdicts[gi * g:(gi + 1) * g],
                             batch.adv[gi * g:(gi + 1) * g].tolist(), [token_records[i] for i in range(gi * g, (gi + 1) * g)])
                for gi in range(len(token_records) // g)]

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


ROW_MEANS = ("gate/fraction",)
"""micro-batch statistics that are means over responses"""
GATED_MEANS = ("kl/distill_gated_mean", "opsd/weight_mean")
"""micro-batch statistics that are means over the gated tokens (`gate/tokens` of them)"""


def combine_micro_stats(parts: list[tuple[dict, dict[str, float]]]) -> dict[str, float]:
    """Whole-batch statistics from per-micro-batch ones, each mean weighted by what it averages over.

    `parts` holds (stats, shares) per micro-batch, shares being its fraction of the batch's loss normaliser
    ("loss"), response tokens ("tokens") and responses ("rows"). Loss terms add with the loss share (their
    sum is the batch loss), response means with the row share, gated-token means with the micro-batch's
    share of `gate/tokens` (a micro-batch without gated tokens counts for nothing, not for a zero), the
    `gate/tokens` count adds up, and every other statistic is a token mean.
    """
    gated_total = sum(stats.get("gate/tokens", 0.0) for stats, _ in parts)
    out: dict[str, float] = {}
    for stats, shares in parts:
        for key, value in stats.items():
            if key == "gate/tokens":
                weight = 1.0
            elif key.startswith("loss/"):
                weight = shares["loss"]
            elif key in ROW_MEANS:
                weight = shares["rows"]
            elif key in GATED_MEANS:
                weight = stats.get("gate/tokens", 0.0) / gated_total if gated_total else 0.0
            else:
                weight = shares["tokens"]
            out[key] = out.get(key, 0.0) + float(value) * weight
    return out


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


def lr_warmup(step: int, warmup_steps: int) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): linear over `warmup_steps` steps, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


@torch.no_grad()
def token_record(tokenizer, weight: torch.Tensor, temperature: float, student_h: torch.Tensor, teacher_h: torch.Tensor,
                 ids: torch.Tensor, *, kl: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor,
                 old_logp: torch.Tensor, ref_logp: torch.Tensor | None = None) -> dict:
    """The per-token arrays of one response for the record stream (`sdpg.records.RESPONSE_FIELDS`).

    `student_h`, `teacher_h` (n, H) are the final hidden states predicting the n response tokens `ids` (n,);
    `weight` (V, H) is the LM head; the other tensors are (n,). `ref_logp` None leaves its array out.
    """
    n = ids.shape[0]
    # student and teacher rows share one pass over the vocabulary: no (n, V) tensor at a real vocabulary
    temps = torch.tensor([temperature] * n + [1.0] * n, device=ids.device)[:, None]  # (2n, 1)
    probs, top_ids, scan_logp = vocab_scan(torch.cat([student_h, teacher_h]), weight, torch.cat([ids, ids]), TOPK,
                                           temperature=temps)  # (2n, k), (2n, k), (2n,)
    s_probs, t_probs, s_ids, t_ids, teacher_lp = probs[:n], probs[n:], top_ids[:n], top_ids[n:], scan_logp[n:]
    rec = {
        "tokens": token_strings(tokenizer, ids.tolist()),
        "student_logp": logp.tolist(), "teacher_logp": teacher_lp.tolist(), "old_logp": old_logp.tolist(),
        "kl": kl.tolist(), "entropy": entropy.tolist(),
        "student_topk": _topk_lists(tokenizer, s_probs, s_ids), "teacher_topk": _topk_lists(tokenizer, t_probs, t_ids),
    }
    if ref_logp is not None:
        rec["ref_logp"] = ref_logp.tolist()
    return rec


def group_record(index: int, row: PromptRow, texts: list[str], rewards: list[float], verdicts: list,
                 adv: list[float], token_records: list[dict]) -> dict:
    """One rollout group for the record stream (`sdpg.records.ROLLOUT_FIELDS`): its row, and per response the text,
    reward, verdict, advantage, gate and the per-token arrays of `token_record`."""
    responses = [{"text": text, "reward": float(reward), "correct": bool(v.correct), "status": v.status,
                  "advantage": float(a), "gate": bool(a > 0), **rec}
                 for text, reward, v, a, rec in zip(texts, rewards, verdicts, adv, token_records, strict=True)]
    return {"group": index, "prompt": row.prompt, "context": row.context, "answer": row.answer, "responses": responses}


def _topk_lists(tokenizer, probs: torch.Tensor, ids: torch.Tensor) -> list:
    strings = token_strings(tokenizer, ids.flatten().tolist())
    k = ids.shape[-1]
    return [[[strings[r * k + c], round(p, 5)] for c, p in enumerate(pr)] for r, pr in enumerate(probs.tolist())]


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
