"""Privileged-context playground: what the teacher makes of one response under different contexts.

Legend: T response tokens, P prompt tokens, H hidden size, K top-k, B sequences, N tokens.

Design choices:
- A variant is only a context string appended to the student prompt, exactly as `PromptRow.teacher_prompt`
  builds the training teacher's input, so every variant is one teacher forward over the same response
  tokens and the numbers are the ones training would see with that context.
- The per-token quantities come from the training code paths: hidden states from `sdpg.forward`, the
  full-vocabulary KL(p || q) from `sdpg.fused_kl` (no (T, V) tensor; only top-k builds one, to rank the
  vocabulary), the Prop. 3.1 advantage from `sdpg.losses.distill_token_advantage`, the loss from
  `sdpg.losses.sdpg_loss` (on-policy: old log p = log p, so the ratio is 1) and the per-token gradient
  weight from `sdpg.whatif.token_weights`. The reference anchor is left out (alpha = 0): the playground
  has no frozen reference.
- The sanity variant gives the teacher the student's own prompt: its hidden states are the student's
  tensor itself, so KL(p || q) is exactly 0 at temperature 1 (at another temperature it is the KL the
  temperature alone makes).
- Weights are read, never written: callers run these functions between optimizer steps
  (`RunHandle.call_between_steps`), on a paused run, or on a checkpoint (`load_subject`). Sampling for the
  gap table runs in a forked RNG, so a live run's random stream is untouched.
- Results are plain dicts (JSON-able, like records), so lab views draw them and notebooks print them.
- Every question is bounded before any forward runs (response tokens within the model's positions, at most
  `MAX_GAP_PROBLEMS` x `MAX_GAP_SAMPLES` sampled sequences whose cache fits in memory), and every variant and
  every generated token checks the run's stop flag (`sdpg.stopping`), so Stop and SIGTERM end a question within
  seconds.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sdpg.config import ModelConfig, TrainConfig
from sdpg.data import TEACHER_TEMPLATE, PromptRow, render_prompts, teacher_context
from sdpg.forward import lm_head_weight, response_hidden
from sdpg.fused_kl import fused_self_distill
from sdpg.losses import distill_token_advantage, sdpg_loss
from sdpg.memory import host_memory_bytes
from sdpg.methods import scheduled_beta
from sdpg.models import load_model_and_tokenizer
from sdpg.rollout import HFRolloutEngine
from sdpg.record_build import token_record
from sdpg.stopping import check_stop
from sdpg.tasks.base import hint_text, parse_hint
from sdpg.whatif import token_weights

SANITY = "own prompt (sanity)"
"""the variant whose teacher sees exactly the student's prompt; its KL is 0"""
MAX_PROBE_TOKENS = 8192
"""longest response a probe reads, whatever the model's positions (each variant's forward grows with its square)"""
MAX_GAP_PROBLEMS = 256
"""most held-out problems one gap measurement samples"""
MAX_GAP_SAMPLES = 64
"""most samples per problem in one gap measurement"""
MEMORY_SHARE = 0.5
"""share of the host's memory one gap measurement's key-value cache may take"""


@dataclass(frozen=True)
class Variant:
    name: str
    """short label shown in tables and titles"""
    context: str
    """text appended to the student prompt for the teacher ("" = the student's own prompt)"""


@dataclass
class Subject:
    """The weights a playground question is asked of, with the settings that shape the answer."""

    model: object
    tokenizer: object
    cfg: TrainConfig
    """the run's config: temperature, loss settings, prompt rendering"""
    step: int = 0
    """training steps the weights have seen (for the scheduled beta)"""

    @classmethod
    def from_trainer(cls, trainer) -> "Subject":
        return cls(trainer.model, trainer.tokenizer, trainer.cfg, trainer.step)


def load_subject(checkpoint: str | Path, *, device: str = "cpu") -> Subject:
    """A checkpoint folder (`<run>/checkpoints/step_XXXXXX`) as a playground subject."""
    ckpt = Path(checkpoint)
    if not (ckpt / "model").is_dir() or not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"{ckpt} is not a checkpoint folder (expected model/ and config.json inside)")
    cfg = TrainConfig.from_dict(json.loads((ckpt / "config.json").read_text()))
    model_cfg = ModelConfig(**{**cfg.model.__dict__, "name": str((ckpt / "model").resolve()), "gradient_checkpointing": False})
    model, tokenizer = load_model_and_tokenizer(model_cfg, device=device, progress=False)
    step = int(ckpt.name.removeprefix("step_")) if ckpt.name.startswith("step_") else 0
    return Subject(model.eval(), tokenizer, cfg, step)


# ----------------------------------------------------------------------------- variants

def context_variants(row: PromptRow, free_text: str = "") -> list[Variant]:
    """The teacher contexts to compare for one problem, derived from what the row carries.

    Embedded-task hints (`sdpg.tasks.base.hint_text`) split into answer and worked solution; other rows get the paper's templates
    with the answer alone, and with the worked solution when the row's context follows `TEACHER_TEMPLATE`.
    A wrong answer needs an integer gold answer. `free_text`, when given, is one more variant.
    """
    out = [Variant("real hint", row.context)] if row.context else []
    wrong = wrong_answer(row.answer)
    parts = parse_hint(row.context)
    if parts:
        answer, solution = parts
        out += [Variant("no hint", hint_text()), Variant("answer only", hint_text(answer)),
                Variant("solution only", hint_text(solution=solution))]
        out += [Variant("wrong answer", hint_text(wrong))] if wrong else []
    else:
        solution = template_solution(row.context)
        out += [Variant("answer only", teacher_context(row.answer))]
        out += [Variant("solution only", teacher_context("(not given)", solution))] if solution else []
        out += [Variant("wrong answer", teacher_context(wrong))] if wrong else []
    out.append(Variant(SANITY, ""))
    if free_text.strip():
        out.append(Variant("free text", free_text if free_text.endswith("\n") else free_text + "\n"))
    return out


def wrong_answer(answer: str) -> str | None:
    """A plausible wrong answer (the gold integer plus one), None for a non-integer answer."""
    return str(int(answer) + 1) if re.fullmatch(r"-?\d+", answer.strip()) else None


def template_solution(context: str) -> str | None:
    """The worked solution inside a context written from `TEACHER_TEMPLATE`, else None."""
    # the template names the answer more than once (the hint, then the instruction): the first occurrence captures it
    pattern = re.escape(TEACHER_TEMPLATE).replace(re.escape("{answer}"), r"(?P<a>.*?)", 1)
    pattern = pattern.replace(re.escape("{answer}"), r"(?P=a)")
    pattern = pattern.replace(re.escape("{solution}"), r"(?P<s>.*)")
    match = re.fullmatch(pattern, context, flags=re.DOTALL)
    return match["s"] if match else None


# ----------------------------------------------------------------------------- one response, every variant

def response_ids(tokenizer, text: str, *, eos: bool = True) -> list[int]:
    """A response as the model would have produced it: its tokens, then EOS when it ended on its own."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids + [tokenizer.eos_token_id] if eos and tokenizer.eos_token_id is not None else ids


def recorded_response_ids(tokenizer, response: dict) -> list[int]:
    """The token ids of a recorded response (`sdpg.records.RESPONSE_FIELDS`): the sampled ids (`token_ids`) when
    the record has them, since a BPE tokenizer may encode the decoded text into other tokens; else (an old run's
    record) its text re-encoded, plus EOS when its per-token arrays show one more token than the text has."""
    if response.get("token_ids") is not None:
        return [int(i) for i in response["token_ids"]]
    ids = response_ids(tokenizer, response["text"], eos=False)
    return ids + [tokenizer.eos_token_id] if len(response.get("tokens", ())) == len(ids) + 1 else ids


@torch.no_grad()
def probe_response(subject: Subject, prompt: str, response: str | list[int], variants: list[Variant], *,
                   advantage: float = 1.0) -> dict:
    """Per variant: the teacher's log q, KL(p || q), top-k, Prop. 3.1 advantage, SDPG loss and token weights.

    `response` is text (EOS appended) or token ids; `advantage` is the response's group advantage A (a
    typed response has none: 1.0 asks "if this response were a good one").
    """
    if not variants:
        raise ValueError("probe_response: give at least one context variant")
    ids = response if isinstance(response, list) else response_ids(subject.tokenizer, response)
    if not ids:
        raise ValueError("probe_response: the response is empty")
    check_probe_length(subject, {v.name: prompt + v.context for v in variants}, len(ids))
    model = subject.model
    device = next(model.parameters()).device
    resp = torch.tensor([ids], device=device)  # (1, T)
    was_training = model.training
    model.eval()
    try:
        student_h = _hidden(subject, prompt, resp)  # (1, T, H)
        base = {"prompt": prompt, "temperature": subject.cfg.rollout.temperature, "advantage": float(advantage), "step": subject.step,
                "variants": []}
        for variant in variants:
            check_stop("the playground")
            teacher_h = student_h if variant.context == "" else _hidden(subject, prompt + variant.context, resp)
            base["variants"].append(_variant_record(subject, variant, student_h[0], teacher_h[0], resp[0], advantage))
    finally:
        model.train(was_training)
    first = base["variants"][0]
    return base | {key: first[key] for key in ("tokens", "student_logp", "entropy", "student_topk")}


def check_probe_length(subject: Subject, prompts: dict[str, str], n_tokens: int) -> None:
    """ValueError naming the numbers when a response of `n_tokens` after the longest of `prompts` (by variant name)
    does not fit the model's positions (`max_position_embeddings`) or `MAX_PROBE_TOKENS`, or a prompt exceeds
    rollout.max_prompt_tokens."""
    rendered = render_prompts(subject.tokenizer, list(prompts.values()), enable_thinking=subject.cfg.model.enable_thinking)
    lengths = [len(ids) for ids in subject.tokenizer(rendered, add_special_tokens=False).input_ids]
    longest = max(lengths)
    name = list(prompts)[lengths.index(longest)]
    if longest > subject.cfg.rollout.max_prompt_tokens:
        raise ValueError(f"the prompt with the {name!r} context is {longest} tokens, more than rollout.max_prompt_tokens="
                         f"{subject.cfg.rollout.max_prompt_tokens}: shorten the prompt, hint or free text")
    positions = getattr(subject.model.config, "max_position_embeddings", None) or longest + MAX_PROBE_TOKENS
    room = min(MAX_PROBE_TOKENS, positions - longest)
    if n_tokens > room:
        raise ValueError(f"the response is {n_tokens} tokens; after its longest prompt ({longest} tokens, the "
                         f"{name!r} context) the model reads at most {positions} positions (max_position_embeddings), "
                         f"so a probe takes at most {max(room, 0)} response tokens: shorten the response or the context")


def check_gap_counts(problems: int, samples: int, available: int = MAX_GAP_PROBLEMS) -> None:
    """ValueError naming the bound when a gap measurement asks for too many problems or samples (checked before
    anything waits for the run)."""
    limit = min(MAX_GAP_PROBLEMS, available)
    if not 1 <= problems <= limit:
        raise ValueError(f"problems is {problems}; choose 1 to {limit} (at most {MAX_GAP_PROBLEMS} per measurement, "
                         f"and no more than the held-out problems there are)")
    if not 1 <= samples <= MAX_GAP_SAMPLES:
        raise ValueError(f"samples per problem is {samples}; choose 1 to {MAX_GAP_SAMPLES}")


def check_gap_request(subject: Subject, problems: int, samples: int, available: int) -> None:
    """ValueError naming the limit when a gap measurement would take too long or its cache would not fit."""
    check_gap_counts(problems, samples, available)
    c, r = subject.model.config, subject.cfg.rollout
    per_token = 2 * c.num_hidden_layers * getattr(c, "num_key_value_heads", c.num_attention_heads) * getattr(
        c, "head_dim", c.hidden_size // c.num_attention_heads) * next(subject.model.parameters()).element_size()
    need = problems * samples * (r.max_prompt_tokens + r.max_new_tokens) * per_token
    budget = MEMORY_SHARE * host_memory_bytes()
    if need > budget:
        raise ValueError(f"{problems} problems x {samples} samples need about {need / 2**30:.1f} GiB of key-value "
                         f"cache, more than {budget / 2**30:.1f} GiB ({MEMORY_SHARE:.0%} of this machine's memory): "
                         f"choose fewer problems or samples")


def _hidden(subject: Subject, text: str, resp: torch.Tensor) -> torch.Tensor:
    """Final hidden states predicting `resp` after the rendered prompt `text`: (1, T) -> (1, T, H)."""
    rendered = render_prompts(subject.tokenizer, [text], enable_thinking=subject.cfg.model.enable_thinking)
    enc = subject.tokenizer(rendered, return_tensors="pt", add_special_tokens=False)
    device = resp.device
    return response_hidden(subject.model, enc.input_ids.to(device), enc.attention_mask.to(device), resp,
                           torch.ones_like(resp))  # (1, T, H)


def _variant_record(subject: Subject, variant: Variant, student_h: torch.Tensor, teacher_h: torch.Tensor,
                    ids: torch.Tensor, advantage: float) -> dict:
    """The per-token arrays and loss of one variant; hidden states (T, H), ids (T,)."""
    cfg = subject.cfg
    weight = lm_head_weight(subject.model)
    kl, logp, entropy = fused_self_distill(student_h, teacher_h, weight, ids, temperature=cfg.rollout.temperature)  # (T,)
    record = token_record(subject.tokenizer, weight, cfg.rollout.temperature, student_h, teacher_h, ids, kl=kl,
                          logp=logp, entropy=entropy, old_logp=logp)
    record |= {"advantage": float(advantage), "correct": advantage > 0}
    beta = scheduled_beta(cfg, subject.step)
    _, stats = sdpg_loss(logp=logp[None], old_logp=logp[None], adv=torch.tensor([float(advantage)]),
                         mask=torch.ones_like(logp)[None], distill_kl=kl[None], beta=beta, alpha=0.0,
                         gate=cfg.loss.gate, clip_low=cfg.loss.clip_low, clip_high=cfg.loss.clip_high,
                         clip_c=cfg.loss.clip_c, agg=cfg.loss.agg, kl_clamp=cfg.loss.kl_clamp)
    teacher_logp = torch.tensor(record["teacher_logp"])  # (T,)
    return {"name": variant.name, "context": variant.context, **record,
            "adv_dist": distill_token_advantage(kl, logp, teacher_logp).tolist(),
            "weight_sdpg": token_weights(record, {"loss": {**cfg.loss.__dict__, "beta": beta, "alpha": 0.0}})["sdpg"],
            "kl_mean": float(kl.mean()), "kl_sum": float(kl.sum()), "teacher_logq_sum": float(teacher_logp.sum()),
            "beta": beta, "loss": {k: v for k, v in stats.items() if k.startswith("loss/")}}


# ----------------------------------------------------------------------------- the student-teacher gap per context

@torch.no_grad()
def context_gap(subject: Subject, rows: list[PromptRow], verifier, *, samples: int = 4, seed: int = 0,
                free_text: str = "") -> list[dict]:
    """Per context variant on `rows`: teacher pass@1 with it, minus the student's, and the mean KL(p || q)
    on the student's own sampled responses; ranked by the gap, largest first.

    Every pass@1 is the mean over `samples` samples per problem at the run's temperature; `verifier` is
    any object with the `MathVerifier.score` signature. A variant some rows cannot derive (a wrong answer
    for a non-integer) is measured on the rows that have it (`problems` says how many).
    """
    if not rows or samples < 1:
        raise ValueError(f"context_gap: need at least one problem and samples >= 1, got {len(rows)} and {samples}")
    check_gap_request(subject, len(rows), samples, len(rows))
    model = subject.model
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[] if next(model.parameters()).device.type == "cpu" else None):
            return _gap_table(subject, rows, verifier, samples, free_text, seed)
    finally:
        model.train(was_training)


def _gap_table(subject: Subject, rows: list[PromptRow], verifier, samples: int, free_text: str,
               seed: int) -> list[dict]:
    # common random numbers: student and every context sample from the same seed, so a difference comes from the
    # context, not the draw (the sanity context, the student's own prompt, gives a gap of exactly 0)
    engine = _engine(subject)
    torch.manual_seed(seed)
    rendered = render_prompts(subject.tokenizer, [r.prompt for r in rows], enable_thinking=subject.cfg.model.enable_thinking)
    student = engine.generate(rendered, samples)
    student_correct = _correct(verifier, student.texts, rows, samples)  # (n, k)
    by_name: dict[str, list[tuple[int, Variant]]] = {}
    for i, row in enumerate(rows):
        for variant in context_variants(row, free_text):
            by_name.setdefault(variant.name, []).append((i, variant))
    table = []
    for name, pairs in by_name.items():
        check_stop("the playground")
        idx = [i for i, _ in pairs]
        texts = [rows[i].prompt + v.context for i, v in pairs]
        torch.manual_seed(seed)
        teacher = engine.generate(render_prompts(subject.tokenizer, texts, enable_thinking=subject.cfg.model.enable_thinking), samples)
        teacher_pass = float(_correct(verifier, teacher.texts, [rows[i] for i in idx], samples).mean())
        student_pass = float(student_correct[idx].mean())
        table.append({"variant": name, "teacher_pass@1": teacher_pass, "student_pass@1": student_pass,
                      "gap": teacher_pass - student_pass, "kl_mean": _kl_on_student(subject, engine, student, idx, texts, samples),
                      "problems": len(idx), "samples": samples})
    return sorted(table, key=lambda r: (-r["gap"], r["kl_mean"]))


def _engine(subject: Subject) -> HFRolloutEngine:
    r = subject.cfg.rollout
    return HFRolloutEngine(subject.model, subject.tokenizer, temperature=r.temperature, top_p=r.top_p,
                           max_new_tokens=r.max_new_tokens, max_prompt_tokens=r.max_prompt_tokens)


def _correct(verifier, texts: list[str], rows: list[PromptRow], samples: int) -> torch.Tensor:
    verdicts = verifier.score(texts, [row.answer for row in rows for _ in range(samples)])
    return torch.tensor([v.correct for v in verdicts], dtype=torch.float32).view(len(rows), samples)  # (n, k)


def _kl_on_student(subject: Subject, engine: HFRolloutEngine, student, idx: list[int], texts: list[str],
                   samples: int) -> float:
    """Token-mean KL(p || q) over the student's sampled responses to problems `idx`, q seeing `texts` (one per problem)."""
    seqs = [i * samples + j for i in idx for j in range(samples)]
    resp, rmask = student.response_ids[seqs], student.response_mask[seqs]  # (B, T)
    rendered = render_prompts(subject.tokenizer, texts, enable_thinking=subject.cfg.model.enable_thinking)
    t_ids, t_mask = engine.encode_prompts(rendered, samples)  # (B, P')
    device = resp.device
    student_h = response_hidden(subject.model, student.prompt_ids[seqs], student.prompt_mask[seqs], resp, rmask)  # (B, T, H)
    teacher_h = response_hidden(subject.model, t_ids.to(device), t_mask.to(device), resp, rmask)  # (B, T, H)
    sel = rmask.bool()  # (B, T)
    kl, _, _ = fused_self_distill(student_h[sel], teacher_h[sel], lm_head_weight(subject.model), resp[sel],
                                  temperature=subject.cfg.rollout.temperature)  # (N,)
    return float(kl.mean()) if kl.numel() else 0.0
