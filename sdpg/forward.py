"""Model forwards over prompt + response: final hidden states at the positions that predict the response.

Legend: B sequences, P prompt tokens (left-padded), T response tokens, H hidden size, V vocabulary, N tokens.

Design choices:
- The loss never needs the full logits: it takes the final hidden states that predict each response token
  and the LM head weight (`sdpg.losses.fused_self_distill`). So forwards stop at the decoder
  (`model.base_model`) and this module hands back `(B, T, H)` hidden states.
- Student and teacher share the response tokens and differ only in the prompt (the teacher's carries the
  privileged context), so both go through `response_hidden` with their own left-padded prompt.
- Positions skip left padding exactly as generation does, so recomputed log-probs match sampling ones.
- Only plain linear LM heads (no bias, no logit soft-capping or scaling) are supported by the fused path;
  `lm_head_weight` refuses anything else with a clear message. Tied or untied makes no difference: the
  head's own weight is used and gets its gradient.
- `logits_self_distill` is the materialised-logits counterpart of the fused KL (`loss.fused_kl = False`):
  same outputs, `(N, V)` tensors, kept as the baseline the fused path is measured against.
- Hidden states from a bfloat16-autocast forward meet a float32 head: logits are computed in the wider
  of the two dtypes.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdpg.fused_kl import TILE_LOGITS
from sdpg.rollout import cache_kwarg, position_ids_from_mask, shared_prompt_cache


def lm_head_weight(model) -> torch.Tensor:
    """The (V, H) output projection; tied embeddings return the embedding matrix itself."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: the LM head has a bias; the fused KL supports bias-free heads only")
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(model.config, attr, None) not in (None, 1.0):
            raise ValueError(f"{type(model).__name__}: config.{attr} is set; the fused KL supports plain linear heads only")
    return head.weight


def response_hidden(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                    response_ids: torch.Tensor, response_mask: torch.Tensor, *, share_prompts: bool = True
                    ) -> torch.Tensor:
    """Final hidden states predicting each response token: (B, P) + (B, T) -> (B, T, H).

    With `share_prompts`, rows whose prompts are identical (a group's samples) share one forward of that
    prompt: it runs once, with its keys and values cached, and each response then runs on its prompt's cache.
    A causal model's prompt states do not depend on the response, so the result is the same up to float
    rounding, gradients included (they flow back through the shared cache and add up over the group).
    Gradient checkpointing drops caches in training, so a checkpointed forward with gradient runs joint, as does
    any model whose decoder leaves the cache empty.
    """
    if not share_prompts or (torch.is_grad_enabled() and model.training and activation_checkpointing(model)):
        return _joint_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask)
    groups, inverse = torch.unique(torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], 1), dim=0,
                                   return_inverse=True)  # (U, 2P), (B,)
    if groups.shape[0] == prompt_ids.shape[0]:
        return _joint_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask)
    p = prompt_ids.shape[1]
    ids, mask = groups[:, :p], groups[:, p:].to(prompt_mask.dtype)  # (U, P)
    cache, prompt_h = shared_prompt_cache(model, ids, mask, inverse)  # each row reads its own prompt's cache
    last = prompt_h[inverse, -1:]  # (B, 1, H): predicts the first response token
    if response_ids.shape[1] == 1:
        return last
    if cache.get_seq_length() != p:
        return _joint_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask)
    attn = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], 1)[:, :-1]  # (B, P+T-1)
    tail = model.base_model(input_ids=response_ids[:, :-1], attention_mask=attn,
                            position_ids=position_ids_from_mask(attn)[:, p:], use_cache=True, **{cache_kwarg(model): cache})
    return torch.cat([last, tail.last_hidden_state], 1)  # (B, T, H)


def activation_checkpointing(model) -> bool:
    """Whether `model` has gradient (activation) checkpointing on."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # newer transformers, older
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def _joint_hidden(model, prompt_ids, prompt_mask, response_ids, response_mask) -> torch.Tensor:
    """`response_hidden` in one forward over each row's prompt + response."""
    input_ids = torch.cat([prompt_ids, response_ids], 1)  # (B, P+T)
    attn = torch.cat([prompt_mask, response_mask.to(prompt_mask.dtype)], 1)  # (B, P+T)
    out = model.base_model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids_from_mask(attn),
                           use_cache=False)
    hidden = out.last_hidden_state  # (B, P+T, H)
    p = prompt_ids.shape[1]
    return hidden[:, p - 1:p - 1 + response_ids.shape[1]]  # (B, T, H)


@torch.no_grad()
def token_logp(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, *,
               temperature: float = 1.0, token_chunk: int = 1024) -> torch.Tensor:
    """log softmax(h W^T / temperature)[token] without gradient, chunked over tokens: (B,T,H) -> (B,T)."""
    flat_h = hidden.reshape(-1, hidden.shape[-1])  # (N, H)
    flat_y = tokens.reshape(-1)  # (N,)
    out = torch.empty(flat_y.shape[0], dtype=torch.float32, device=hidden.device)  # (N,)
    for i in range(0, flat_h.shape[0], token_chunk):
        logits = _logits(flat_h[i:i + token_chunk], weight) / temperature  # (c, V)
        out[i:i + token_chunk] = logits.gather(-1, flat_y[i:i + token_chunk, None]).squeeze(-1) - logits.logsumexp(-1)
    return out.view(tokens.shape)  # (B, T)


@torch.no_grad()
def vocab_scan(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, k: int, *,
               temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k next-token probabilities, their ids and log p(token) per row, in one pass over vocabulary tiles.

    (N, H) hidden states and (N,) tokens -> probs (N, k), ids (N, k), logp (N,); `temperature` is a float or
    (N, 1) per row. The vocabulary is the outer loop, so the (V, H) weight is read once, and no tile holds
    more than `TILE_LOGITS` logits: nothing of size (N, V) is ever built. Top-k and log-sum-exp are merged
    tile by tile.
    """
    n, k = hidden.shape[0], min(k, weight.shape[0])
    rows = min(n, TILE_LOGITS // 256)
    probs, ids, logp = [], [], []
    for r0 in range(0, n, rows):
        h, y = hidden[r0:r0 + rows], tokens[r0:r0 + rows]  # (r, H), (r,)
        temp = temperature[r0:r0 + rows] if isinstance(temperature, torch.Tensor) else temperature
        cols = max(1, TILE_LOGITS // h.shape[0])
        lse = torch.full((h.shape[0],), -math.inf, device=h.device)  # (r,)
        top = torch.empty(h.shape[0], 0, device=h.device)  # (r, <=k)
        top_ids = torch.empty(h.shape[0], 0, dtype=torch.long, device=h.device)  # (r, <=k)
        picked = torch.empty(h.shape[0], device=h.device)  # (r,)
        for v0 in range(0, weight.shape[0], cols):
            logits = _logits(h, weight[v0:v0 + cols]) / temp  # (r, v)
            lse = torch.logaddexp(lse, logits.logsumexp(-1))
            tile_top, tile_ids = logits.topk(min(k, logits.shape[1]), -1)  # (r, k)
            top, pos = torch.cat([top, tile_top], 1).topk(min(k, top.shape[1] + tile_top.shape[1]), -1)  # (r, k)
            top_ids = torch.cat([top_ids, tile_ids + v0], 1).gather(1, pos)  # (r, k)
            here = ((y >= v0) & (y < v0 + logits.shape[1])).nonzero().squeeze(1)  # (m,)
            picked[here] = logits[here, y[here] - v0]
        probs.append((top - lse[:, None]).exp())
        ids.append(top_ids)
        logp.append(picked - lse)
    return torch.cat(probs), torch.cat(ids), torch.cat(logp)  # (N, k), (N, k), (N,)


def logits_self_distill(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, weight: torch.Tensor,
                        tokens: torch.Tensor, *, temperature: float = 1.0, teacher_weight: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token KL(p_student || q_teacher), student log p(token) and entropy through full (N, V) logits.

    The same outputs as `sdpg.losses.fused_self_distill` for (N, H) hidden states and (N,) tokens, with
    p = softmax(student logits / temperature) and q = softmax(teacher logits) detached, in float32.
    """
    log_p = F.log_softmax(_logits(student_hidden, weight) / temperature, -1)  # (N, V)
    t_weight = weight if teacher_weight is None else teacher_weight
    log_q = F.log_softmax(_logits(teacher_hidden.detach(), t_weight.detach()), -1)  # (N, V)
    p = log_p.exp()  # (N, V)
    kl = (p * (log_p - log_q)).sum(-1)  # (N,)
    logp = log_p.gather(-1, tokens[:, None]).squeeze(-1)  # (N,)
    entropy = -(p * log_p).sum(-1)  # (N,)
    return kl, logp, entropy


def _logits(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """float32 logits h W^T, the GEMM in the wider of the two dtypes: (..., H) -> (..., V)."""
    dtype = torch.promote_types(hidden.dtype, weight.dtype)
    return (hidden.to(dtype) @ weight.to(dtype).T).float()  # (..., V)
