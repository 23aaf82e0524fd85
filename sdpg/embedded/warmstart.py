"""Supervised warm start of the embedded model: from random weights to a policy RL can improve.

Shapes: B sequences, L tokens per padded sequence, V vocabulary.

Design choices:
- Teacher forcing on the response only: the task's taught response (`\\boxed{answer}`, or worked steps
  then the box) + EOS after the chat-rendered prompt.
- A share of each batch (`hinted_fraction`) uses the teacher prompt, so the model learns to read the hint:
  in SDPG the teacher is this same model. A task may cycle several context variants over the hinted
  examples, so its teacher can read each of them.
- Every example is a distinct train-split problem, so the model must generalise rather than memorise.
- Training stops on a skill target (`stop_at`, checked every `check_every` steps), never on time or a fixed
  step count: the pass rate jumps near a step that varies with the seed and even the CPU thread count.
- Right-padding without an attention mask is safe: causal attention keeps real tokens from seeing the
  padding after them, and the loss mask drops it.
- A requested stop (`sdpg.stopping`) ends training or an evaluation within a step or a token; nothing is cached.
- Held-out figures are measured the way RL sees the model (sampled pass@1 at temperature 1, student and
  teacher prompts). Reproducible by seed; the caller's RNG state is left as it was.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from sdpg.data import PromptRow, render_prompts
from sdpg.embedded.model import TinyModelConfig, build_tiny_model
from sdpg.embedded.tokenizer import build_char_tokenizer
from sdpg.stopping import check_stop, stop_criteria
from sdpg.tasks import CONTEXTS, Problem, Task, get_task
from sdpg.tasks.base import boxed

BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


@dataclass(frozen=True)
class WarmStartConfig:
    """Everything that shapes the embedded model; its hash keys the cache entry.

    The defaults, measured on 2 CPU cores: held-out student pass@1 (sampled, T=1) 0.25-0.32 and teacher
    (with the hint) 0.94-0.96 over five runs (seeds 0-3, one and two threads), stopping after 340-510
    steps; seed 0 with two threads takes about 3 minutes.
    """

    task: str = "add"
    """embedded task (`sdpg.tasks.TASKS`) the model learns"""
    digits: tuple[int, int] = (3, 2)
    """add task: digits of the two addends (3+2 learns within the step budget; 3+3 mostly does not)"""
    steps: int = 600
    """most optimizer steps (the cosine schedule spans them; training may stop earlier, see stop_at)"""
    stop_at: float = 0.4
    """stop once the student's greedy pass rate on `check_prompts` unseen problems reaches this
    (1.0 = run all steps); 0.4 greedy gave about 0.28 sampled pass@1 at temperature 1"""
    check_every: int = 10
    """steps between those checks"""
    check_prompts: int = 128
    """unseen train-split problems scored greedily by the stopping check"""
    batch_size: int = 128
    """sequences per step"""
    hinted_fraction: float = 0.5
    """share of each batch rendered with the teacher's hint"""
    lr: float = 3e-3
    """AdamW peak learning rate"""
    warmup_steps: int = 20
    """linear learning-rate warmup before the cosine decay to zero"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """gradient-norm clip"""
    seed: int = 0
    """seed for the initial weights, the problems, the hint draw and the evaluation samples"""
    eval_prompts: int = 256
    """held-out (val split) problems for the reported pass rates"""
    eval_samples: int = 4
    """samples per held-out problem at temperature 1; pass@1 is their mean"""
    model: TinyModelConfig = field(default_factory=TinyModelConfig)
    """shape of the tiny Qwen3 model"""


def warm_start(cfg: WarmStartConfig = WarmStartConfig(), *, progress: bool = True,
               on_step: Callable[[dict], None] | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict]:
    """Train a fresh embedded model on its task; return it (eval mode), its tokenizer and a report.

    The report holds the settings, `eval/student_pass@1` and `eval/teacher_pass@1` (sampled at T=1),
    their greedy counterparts, the steps run, the last stopping check, the last training loss and the
    wall time. `on_step`, when given, gets `{"step", "steps", "loss", "target", "elapsed_s"}` after every
    training step, plus `"check"` (greedy pass rate on unseen problems) on the steps that ran the stopping check.
    """
    _check(cfg)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, cfg.model)
        losses, stop_check = _train(model, tokenizer, cfg, progress, on_step)
        train_s = time.perf_counter() - start
        task = task_of(cfg)
        figures = evaluate(model, tokenizer, task.rows(cfg.eval_prompts, seed=0, split="val"),
                           samples=cfg.eval_samples, max_new_tokens=task.response_tokens + 2)
    report = {
        "settings": dataclasses.asdict(cfg),
        **figures,
        "train/steps": len(losses),
        "train/stop_check": stop_check,
        "train/loss_final": sum(losses[-20:]) / len(losses[-20:]),
        "time/train_s": round(train_s, 1),
        "time/warm_start_s": round(time.perf_counter() - start, 1),
    }
    return model, tokenizer, report


def task_of(cfg: WarmStartConfig) -> Task:
    """The task `cfg` warm-starts on, at its `digits` where the task has that setting."""
    return get_task(cfg.task, cfg.digits)


def _check(cfg: WarmStartConfig) -> None:
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"warm start: steps and batch_size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
    if not 0.0 <= cfg.hinted_fraction <= 1.0:
        raise ValueError(f"warm start: hinted_fraction must be in [0, 1], got {cfg.hinted_fraction}")
    if not 0.0 <= cfg.stop_at <= 1.0:
        raise ValueError(f"warm start: stop_at must be in [0, 1], got {cfg.stop_at}")
    if min(cfg.eval_prompts, cfg.eval_samples, cfg.check_every, cfg.check_prompts) < 1:
        raise ValueError(f"warm start: eval_prompts, eval_samples, check_every and check_prompts must be >= 1, got "
                         f"{cfg.eval_prompts}, {cfg.eval_samples}, {cfg.check_every} and {cfg.check_prompts}")


def _train(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: WarmStartConfig, progress: bool,
           on_step: Callable[[dict], None] | None = None) -> tuple[list[float], float | None]:
    """Train until `cfg.steps` or until the stopping check passes; return the per-step losses and the
    last check's greedy student pass rate (None when no check ran)."""
    task = task_of(cfg)
    rows = task.problems(cfg.steps * cfg.batch_size + cfg.check_prompts, seed=cfg.seed, split="train")
    n_hinted = round(cfg.hinted_fraction * cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, cfg))
    losses, student, postfix, start = [], None, {}, time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="warm start (runs once, then cached)", disable=not progress)
    for step in bar:
        check_stop("the embedded warm start")  # the cache entry is written only by a warm start that ends
        model.train()
        batch = rows[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        losses.append(_train_step(model, tokenizer, optimizer, batch, n_hinted, task.warm_contexts, cfg.grad_clip))
        scheduler.step()
        postfix["loss"] = f"{losses[-1]:.3f}"
        checked = {}
        if cfg.stop_at < 1.0 and (step + 1) % cfg.check_every == 0:
            model.eval()
            student = skill_check(model, tokenizer, cfg, rows[cfg.steps * cfg.batch_size:])
            postfix["student"] = f"{student:.2f}"
            checked = {"check": student}
        if on_step is not None:
            on_step({"step": step + 1, "steps": cfg.steps, "loss": losses[-1], "target": cfg.stop_at,
                     "elapsed_s": time.perf_counter() - start, **checked})
        bar.set_postfix(postfix, refresh=False)
        if student is not None and student >= cfg.stop_at:
            break
    bar.close()
    model.eval()
    return losses, student


def skill_check(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, cfg: WarmStartConfig,
                check_rows: list[Problem] | None = None) -> float:
    """The stopping check: the greedy student pass rate on the `cfg.check_prompts` unseen train-split problems
    that follow the training problems; a warm-started model has passed it when this reaches `cfg.stop_at`."""
    if check_rows is None:
        n_train = cfg.steps * cfg.batch_size
        check_rows = task_of(cfg).problems(n_train + cfg.check_prompts, seed=cfg.seed, split="train")[n_train:]
    return _pass_rate(model, tokenizer, [p.question for p in check_rows], [p.answer for p in check_rows],
                      samples=1, batch_size=256, sample=False, max_new_tokens=task_of(cfg).response_tokens + 2)


def _train_step(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, optimizer: torch.optim.Optimizer,
                batch: list[Problem], n_hinted: int, contexts: tuple[str, ...], grad_clip: float) -> float:
    """One AdamW step on the token-mean response NLL of `batch`, its first `n_hinted` problems shown a hint
    (the `contexts` variants in turn)."""
    # Problems come in random order, so the first n_hinted form a random hinted subset. Hinted prompts are
    # about twice as long: padding them apart from the plain ones saves a third of the compute.
    hinted, plain = batch[:n_hinted], batch[n_hinted:]
    hinted_texts = [p.question + CONTEXTS[contexts[i % len(contexts)]](p) for i, p in enumerate(hinted)]
    batches = [_teacher_forcing_batch(tokenizer, texts, [p.response for p in part])
               for part, texts in ((hinted, hinted_texts), (plain, [p.question for p in plain])) if part]
    n_tokens = sum(int(mask.sum()) for _, mask in batches)
    optimizer.zero_grad(set_to_none=True)
    loss = 0.0
    for input_ids, loss_mask in batches:
        part_loss = _response_nll_sum(model, input_ids, loss_mask) / n_tokens
        part_loss.backward()
        loss += part_loss.item()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


def _lr_factor(step: int, cfg: WarmStartConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _teacher_forcing_batch(tokenizer: PreTrainedTokenizerBase, texts: list[str], targets: list[str]
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rendered prompt + target response + EOS per example, right-padded; the mask marks the target tokens."""
    prompt_ids = tokenizer(render_prompts(tokenizer, texts), add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(targets, add_special_tokens=False)["input_ids"]
    sequences = [p + t + [tokenizer.eos_token_id] for p, t in zip(prompt_ids, target_ids)]
    length = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), tokenizer.pad_token_id)  # (B, L)
    loss_mask = torch.zeros((len(sequences), length), dtype=torch.bool)  # (B, L)
    for i, (prompt, seq) in enumerate(zip(prompt_ids, sequences)):
        input_ids[i, :len(seq)] = torch.tensor(seq)
        loss_mask[i, len(prompt):len(seq)] = True
    return input_ids, loss_mask


def _response_nll_sum(model: PreTrainedModel, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of the masked (response) tokens, each predicted from its prefix."""
    logits = model(input_ids=input_ids).logits[:, :-1]  # (B, L-1, V)
    nll = F.cross_entropy(logits.float().transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, L-1)
    return (nll * loss_mask[:, 1:]).sum()


@torch.no_grad()
def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[PromptRow], *,
             samples: int = 4, batch_size: int = 256, max_new_tokens: int | None = None) -> dict[str, float]:
    """Held-out pass rates with the student prompt and with the teacher prompt.

    `eval/<role>_pass@1` is the mean correctness over `samples` samples per problem at temperature 1;
    `eval/<role>_greedy` is the greedy answer's. Correct means the first `\\boxed{}` holds the gold string.
    Responses stop at `max_new_tokens` (default: room for `\\boxed{answer}`, the add task's response).
    """
    max_new = max_new_tokens or max(len(boxed(row.answer)) for row in rows) + 2
    figures = {}
    for role in ("student", "teacher"):
        texts = [row.teacher_prompt if role == "teacher" else row.prompt for row in rows]
        answers = [row.answer for row in rows]
        figures[f"eval/{role}_pass@1"] = _pass_rate(model, tokenizer, texts, answers, samples, batch_size,
                                                    sample=True, max_new_tokens=max_new)
        figures[f"eval/{role}_greedy"] = _pass_rate(model, tokenizer, texts, answers, 1, batch_size, sample=False,
                                                    max_new_tokens=max_new)
    return figures


def _pass_rate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], answers: list[str],
               samples: int, batch_size: int, sample: bool, max_new_tokens: int) -> float:
    """Share of `samples` generations per text (sampled at T=1, or greedy) whose boxed answer is the gold."""
    per_batch = max(1, batch_size // samples)
    correct = 0
    for lo in range(0, len(texts), per_batch):
        enc = tokenizer(render_prompts(tokenizer, texts[lo:lo + per_batch]), add_special_tokens=False,
                        padding=True, return_tensors="pt").to(model.device)
        sampling = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
        out = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=samples,
                             stopping_criteria=stop_criteria(), **sampling)  # (b*samples, L)
        check_stop("the embedded warm start's evaluation")
        decoded = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        gold = [a for a in answers[lo:lo + per_batch] for _ in range(samples)]
        correct += sum(_boxed(text) == g for text, g in zip(decoded, gold))
    return correct / (len(texts) * samples)


def _boxed(text: str) -> str | None:
    match = BOXED.search(text)
    return match.group(1) if match else None
