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

import torch
import torch.nn.functional as F

from sdpg.fused_kl import TILE_LOGITS
from sdpg.rollout import position_ids_from_mask


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
                    response_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Final hidden states predicting each response token: (B, P) + (B, T) -> (B, T, H)."""
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
def topk_next_tokens(hidden: torch.Tensor, weight: torch.Tensor, k: int, *, temperature: float = 1.0,
                     token_chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k next-token probabilities per position, chunked over tokens: (T, H) -> probs (T, k), ids (T, k).

    `token_chunk=None` sizes chunks to `record_chunk(V)` rows, so no (T, V) tensor is ever built.
    """
    chunk = token_chunk or record_chunk(weight.shape[0])
    k = min(k, weight.shape[0])
    probs = torch.empty(hidden.shape[0], k, dtype=torch.float32, device=hidden.device)  # (T, k)
    ids = torch.empty(hidden.shape[0], k, dtype=torch.long, device=hidden.device)  # (T, k)
    for i in range(0, hidden.shape[0], chunk):
        logits = _logits(hidden[i:i + chunk], weight) / temperature  # (c, V)
        top, ids[i:i + chunk] = logits.topk(k, -1)  # (c, k)
        probs[i:i + chunk] = (top - logits.logsumexp(-1, keepdim=True)).exp()
    return probs, ids


def record_chunk(vocab: int) -> int:
    """Tokens per chunk for per-token records: one `TILE_LOGITS`-sized (chunk, V) logits tile at a time."""
    return max(1, TILE_LOGITS // vocab)


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
