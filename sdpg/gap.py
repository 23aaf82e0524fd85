"""The student–self-teacher gap: how much a privileged context helps the model that will be trained on it.

Legend: B sequences (problems x k samples), P prompt tokens, T response tokens, H hidden size, N tokens.

Design choices:
- Measured before training, from one model: the student answers the plain prompt, the teacher is the
  same weights reading the prompt followed by the context. The gap is teacher pass@1 minus student
  pass@1 (k samples per problem at the sampling temperature), and the mean full-vocabulary
  KL(p_student || q_teacher) per token on the student's own responses — the signal self-distillation
  would train on.
- Student and teacher sample under the same seed (common random numbers): the gap's noise shrinks, and
  a context that adds nothing (the teacher reads exactly the student's prompt) gives a gap and a KL of
  exactly zero.
- The context is a function of the row, so a dashboard measures its run's own context (`row.context`)
  and an experiment swaps context variants without building new rows.
- Everything goes through the engine's own pieces (HF rollout, the verifier, `response_hidden`, the
  fused KL), so the figures are the ones training would see.
"""
from __future__ import annotations

from typing import Callable

import torch

from sdpg.data import PromptRow, render_prompts
from sdpg.forward import lm_head_weight, response_hidden
from sdpg.fused_kl import fused_self_distill
from sdpg.rollout import HFRolloutEngine, Rollout


def own_context(row: PromptRow) -> str:
    """The row's own privileged context (what a run's teacher sees)."""
    return row.context


@torch.no_grad()
def context_gap(model, tokenizer, rows: list[PromptRow], context: Callable[[PromptRow], str] = own_context, *,
                k: int = 4, verifier, max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                batch_size: int = 256) -> dict[str, float]:
    """Teacher pass@1 with `context`, the student's, their gap and the mean KL(p_student || q_teacher).

    `verifier.score(texts, answers)` returns verdicts with `.correct`. Keys: `gap/student_pass@1`,
    `gap/teacher_pass@1`, `gap/pass@1` (teacher minus student), `gap/kl_mean` (nats per response token of
    the student's samples), `gap/response_length`.
    """
    if not rows or k < 1:
        raise ValueError(f"context_gap: need at least one row and k >= 1, got {len(rows)} rows and k={k}")
    engine = HFRolloutEngine(model, tokenizer, temperature=temperature, max_new_tokens=max_new_tokens,
                             batch_size=batch_size)
    answers = [row.answer for row in rows for _ in range(k)]
    student_texts = [row.prompt for row in rows]
    teacher_texts = [row.prompt + context(row) for row in rows]
    student = _sample(engine, render_prompts(tokenizer, student_texts), k, seed)
    teacher = _sample(engine, render_prompts(tokenizer, teacher_texts), k, seed)
    student_pass = _pass_rate(verifier, student, answers)
    teacher_pass = _pass_rate(verifier, teacher, answers)
    kl_sum, n_tokens = _kl_on_student_samples(model, engine, student, render_prompts(tokenizer, teacher_texts),
                                              k, temperature, batch_size)
    return {"gap/student_pass@1": student_pass, "gap/teacher_pass@1": teacher_pass,
            "gap/pass@1": teacher_pass - student_pass, "gap/kl_mean": kl_sum / max(n_tokens, 1),
            "gap/response_length": float(student.lengths.float().mean())}


def _sample(engine: HFRolloutEngine, prompts: list[str], k: int, seed: int) -> Rollout:
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        torch.manual_seed(seed)
        return engine.generate(prompts, k)


def _pass_rate(verifier, rollout: Rollout, answers: list[str]) -> float:
    return sum(v.correct for v in verifier.score(rollout.texts, answers)) / len(answers)


def _kl_on_student_samples(model, engine: HFRolloutEngine, student: Rollout, teacher_prompts: list[str], k: int,
                           temperature: float, batch_size: int) -> tuple[float, int]:
    """Summed per-token KL(p_student || q_teacher) over the student's response tokens, and their count."""
    device = next(model.parameters()).device
    teacher_ids, teacher_mask = engine.encode_prompts(teacher_prompts, k)  # (B, P')
    weight = lm_head_weight(model)
    was_training = model.training
    model.eval()
    kl_sum, n_tokens = 0.0, 0
    for lo in range(0, student.response_ids.shape[0], batch_size):
        sl = slice(lo, lo + batch_size)
        resp, rmask = student.response_ids[sl].to(device), student.response_mask[sl].to(device)  # (b, T)
        sel = rmask.bool()  # (b, T)
        student_h = response_hidden(model, student.prompt_ids[sl].to(device), student.prompt_mask[sl].to(device),
                                    resp, rmask)  # (b, T, H)
        teacher_h = response_hidden(model, teacher_ids[sl].to(device), teacher_mask[sl].to(device), resp, rmask)
        kl, _, _ = fused_self_distill(student_h[sel], teacher_h[sel], weight, resp[sel], temperature=temperature)  # (N,)
        kl_sum += float(kl.double().sum())
        n_tokens += int(sel.sum())
    model.train(was_training)
    return kl_sum, n_tokens
