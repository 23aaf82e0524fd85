"""Rollout: sample G responses per prompt, a `@torch.no_grad()` boundary returning a frozen batch.

Legend: B sequences (prompts x G), P prompt tokens (left-padded), T response tokens (right-padded), V vocabulary.

Design choices:
- The engine interface is one method, `generate(prompts, group_size) -> Rollout`, plus `sync_weights(model)`
  called after each optimizer step (a no-op when the engine shares the training model, as the HF one does;
  an external engine such as vLLM reloads weights there).
- Old log-probs are those of the sampling policy at the sampling temperature, without top-p truncation:
  the same quantity the loss recomputes, so the PPO ratio starts at 1. They are taken inside `generate`
  as each token is drawn (`SampledLogp`), so only one step's (B, V) log-softmax exists at a time, never
  `generate`'s kept (B, T, V) logits.
- Sequences are laid out group after group (prompt 0's G responses, then prompt 1's, ...), the layout
  `group_advantages` expects.
- Keys and values are cached in buffers with room to grow (`GrowingCache`): a decoding step writes its token's
  into place instead of copying the whole cache as `DynamicCache` does (8 % of generation on the 25M bench
  shape, `bench/RESULTS.md`); the values, and so the draws, are the same.
- A requested stop (`sdpg.stopping`) ends decoding at the next token and raises `Stopped`.
- Everything after the first EOS is padding and masked out; a response that hits the length limit
  without EOS is marked `truncated`.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers import DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers.cache_utils import DynamicLayer

from sdpg.stopping import check_stop, stop_criteria


@dataclass(frozen=True)
class Rollout:
    prompt_ids: torch.Tensor
    """(B, P) left-padded student prompt tokens"""
    prompt_mask: torch.Tensor
    """(B, P) 1 on real prompt tokens"""
    response_ids: torch.Tensor
    """(B, T) sampled tokens, right-padded"""
    response_mask: torch.Tensor
    """(B, T) 1 on response tokens up to and including EOS"""
    old_logp: torch.Tensor
    """(B, T) log-prob of each sampled token under the sampling policy (temperature applied)"""
    texts: list[str]
    """decoded responses (special tokens removed)"""
    truncated: torch.Tensor
    """(B,) True where the response reached max_new_tokens without EOS"""
    group_size: int
    """G: responses per prompt"""

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (B,)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], group_size: int) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as generation uses them: (B, L) -> (B, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)


def cache_kwarg(model) -> str:
    """The name of the decoder's KV-cache argument: `cache` in newer transformers, else `past_key_values` (a
    wrapper whose `base_model` is not the decoder itself names it in its own `cache_kwarg` attribute)."""
    return getattr(model, "cache_kwarg", None) or _cache_kwarg_of(type(model.base_model).forward)


@functools.cache
def _cache_kwarg_of(forward) -> str:
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views into buffers with spare length: appending writes in place
    and copies only when the buffer is full (then to twice the length, at most `max_length` when it is known).
    A tensor that other code put in `keys` / `values` (row selection, cropping) becomes the new buffer."""

    def __init__(self, max_length: int | None = None):
        super().__init__()
        self.max_length = max_length
        self._bufs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._view: torch.Tensor | None = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self._bufs is None or self.keys is not self._view:  # adopt what was put there
            self._length = self.keys.shape[-2] if self.keys.numel() else 0
            self._bufs = (self.keys, self.values) if self._length else None
        need = self._length + key_states.shape[-2]
        if self._bufs is None or need > self._bufs[0].shape[-2]:
            cap = max(need, min(2 * need, self.max_length or 2 * need))
            bufs = tuple(new.new_empty((*new.shape[:-2], cap, new.shape[-1])) for new in (key_states, value_states))
            if self._bufs is not None:
                for buf, old in zip(bufs, self._bufs):
                    buf[..., :self._length, :] = old[..., :self._length, :]
            self._bufs = bufs
        for buf, new in zip(self._bufs, (key_states, value_states)):
            buf[..., self._length:need, :] = new
        self._length = need
        self.keys, self.values = (buf[..., :need, :] for buf in self._bufs)
        self._view = self.keys
        return self.keys, self.values


class GrowingCache(DynamicCache):
    """`DynamicCache` of `_GrowingLayer`s; `max_length` (prompt + new tokens), when known, caps their buffers."""

    def __init__(self, max_length: int | None = None):
        super().__init__()
        self.layer_class_to_replicate = functools.partial(_GrowingLayer, max_length)


def shared_prompt_cache(model, ids: torch.Tensor, mask: torch.Tensor, index: torch.Tensor, cache=None):
    """Run each of the (U, L) prompts once with its keys and values cached in `cache` (default: a new
    `DynamicCache`), then give row b of the cache prompt `index[b]`'s: (cache for B rows, (U, L, H) final hidden
    states of the prompts)."""
    cache = DynamicCache() if cache is None else cache
    out = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                           use_cache=True, **{cache_kwarg(model): cache})
    cache.batch_select_indices(index)
    return cache, out.last_hidden_state


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask up to and including the first EOS; returns (mask (B,T), truncated (B,))."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids, device=response_ids.device))  # (B, T)
    eos_seen_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # (B, T)
    mask = (~eos_seen_before).long()  # (B, T)
    truncated = ~is_eos.any(-1)  # (B,)
    return mask, truncated


class SampledLogp:
    """Log-probs of the tokens `generate` samples, taken one step at a time.

    A logits processor (`generate` runs custom ones before its temperature and top-p warpers, so it sees the
    raw logits) keeps the step's log-softmax at the sampling temperature; a stopping criterion (called once
    the step's token is appended) picks the sampled token's entry and drops the rest.
    """

    def __init__(self, temperature: float):
        self.temperature = temperature
        self._step: torch.Tensor | None = None
        self._picked: list[torch.Tensor] = []

    def hooks(self) -> dict:
        """`generate` keyword arguments that install the two hooks."""
        return {"logits_processor": LogitsProcessorList([_StepLogSoftmax(self)]),
                "stopping_criteria": stop_criteria(_PickSampled(self))}

    def take(self, width: int) -> torch.Tensor:
        """(b, width) log-probs of the first `width` sampled tokens; resets for the next call."""
        logp = torch.cat(self._picked, 1)[:, :width]  # (b, T)
        self._picked = []
        return logp


class _StepLogSoftmax(LogitsProcessor):
    def __init__(self, owner: SampledLogp):
        self.owner = owner

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.owner._step = F.log_softmax(scores.float() / self.owner.temperature, -1)  # (b, V)
        return scores


class _PickSampled(StoppingCriteria):
    def __init__(self, owner: SampledLogp):
        self.owner = owner

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        self.owner._picked.append(self.owner._step.gather(-1, input_ids[:, -1:]))  # (b, 1)
        self.owner._step = None
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)  # (b,)


class HFRolloutEngine:
    """Batched sampling with `transformers` `generate` on the training model itself."""

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, max_prompt_tokens: int = 2048, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.batch_size = batch_size
        eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = [eos] if isinstance(eos, int) else list(eos)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """The HF engine samples from the training model itself: nothing to copy."""

    def encode_prompts(self, prompts: list[str], group_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded token ids and mask of each prompt, `group_size` rows in a row: (len(prompts) * G, P) each.
        Each prompt is tokenized once, however many rows repeat it."""
        enc = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        if enc.input_ids.shape[1] > self.max_prompt_tokens:
            longest = int(enc.attention_mask.sum(-1).argmax())
            raise ValueError(f"prompt {longest} has {int(enc.attention_mask[longest].sum())} tokens, more than "
                             f"rollout.max_prompt_tokens={self.max_prompt_tokens}: {prompts[longest][:80]!r}...")
        return enc.input_ids.repeat_interleave(group_size, 0), enc.attention_mask.repeat_interleave(group_size, 0)

    def _shared_prefill(self, ids: torch.Tensor, attn: torch.Tensor, rows: slice, group_size: int) -> dict:
        """`generate`'s cache argument with every prompt but its last token already run, once per group: rows
        `rows` of the (B, P) prompts come in groups of `group_size` identical ones. Generation then runs each
        group's prompt once instead of `group_size` times; the draws are the same (`tests/test_rollout.py`). The
        cache is a `GrowingCache` sized for the prompt and `max_new_tokens`, shared or not."""
        max_length = ids.shape[1] + self.max_new_tokens
        if group_size == 1 or ids.shape[1] < 2:
            return {cache_kwarg(self.model): GrowingCache(max_length)}
        group = torch.arange(rows.start, rows.stop, device=ids.device) // group_size  # (b,)
        first = int(group[0])
        heads = torch.arange(first, int(group[-1]) + 1, device=ids.device) * group_size  # (u,) a row of each group
        cache, _ = shared_prompt_cache(self.model, ids[heads, :-1], attn[heads, :-1], group - first,
                                       GrowingCache(max_length))  # (u, P-1) prompts
        return {cache_kwarg(self.model): cache}

    @torch.no_grad()
    def generate(self, prompts: list[str], group_size: int) -> Rollout:
        device = next(self.model.parameters()).device
        ids, attn = self.encode_prompts(prompts, group_size)
        ids, attn = ids.to(device), attn.to(device)  # (B, P)
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = self._sample(ids, attn, group_size)
        finally:
            self.model.train(was_training)
        width = max(r.shape[1] for r, _ in chunks)
        resp = torch.cat([F.pad(r, (0, width - r.shape[1]), value=self.pad_id) for r, _ in chunks])  # (B, T)
        old_logp = torch.cat([F.pad(lp, (0, width - lp.shape[1])) for _, lp in chunks])  # (B, T)
        mask, truncated = response_mask_from_ids(resp, self.eos_ids)
        resp = torch.where(mask.bool(), resp, torch.full_like(resp, self.pad_id))
        texts = self.tokenizer.batch_decode(resp, skip_special_tokens=True)
        return Rollout(prompt_ids=ids, prompt_mask=attn, response_ids=resp, response_mask=mask,
                       old_logp=old_logp * mask, texts=texts, truncated=truncated, group_size=group_size)

    def _sample(self, ids: torch.Tensor, attn: torch.Tensor, group_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(responses, their log-probs) per chunk of at most `batch_size` rows of the (B, P) prompts."""
        chunks = []
        sampled = SampledLogp(self.temperature)
        for i in range(0, ids.shape[0], self.batch_size):
            rows = slice(i, min(i + self.batch_size, ids.shape[0]))
            out = self.model.generate(
                input_ids=ids[rows], attention_mask=attn[rows],
                do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=0,
                max_new_tokens=self.max_new_tokens, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                **self._shared_prefill(ids, attn, rows, group_size), **sampled.hooks())
            check_stop("generation")  # a stop cuts decoding short: the partial responses are thrown away
            resp = out[:, ids.shape[1]:]  # (b, T)
            chunks.append((resp, sampled.take(resp.shape[1])))  # (b, T) each
        return chunks
