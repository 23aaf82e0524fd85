"""Full-vocabulary student-to-teacher KL, log-prob and entropy straight from hidden states, never holding
an `(N, V)` logits tensor.

Design choices:
- Tiles of `token_chunk x vocab_chunk` logits are made one at a time, vocabulary loop outermost, so each
  weight chunk is read (and cast) once per pass and its weight gradient is finished before moving on.
- Forward is one pass: student and teacher tiles come from one stacked GEMM, and chunks merge exactly
  by log-add-exp; the (N,) merges run in float64 because float32 merging added more error than the tiles.
  On a CPU, few fused passes over each tile matter more than the arithmetic in them.
- Backward recomputes each tile and uses closed-form logit gradients (`_backward_tiles`), folded into
  one tile `G = p * (c1 log p + c2 log q + c0)`; the sampled token's term is a row gather, never a one-hot.
- Temperature divides the student hidden state once (`N x H`); the teacher uses raw logits.
- The teacher never gets a gradient, so tied embeddings are safe; a teacher with its own LM head passes
  `teacher_weight`.
- Masked tokens are dropped before the loops. Arithmetic is float32 for bf16/fp16 inputs (float64 stays
  float64 for gradcheck); gradients come back in each input's dtype.

Shapes: N tokens, H hidden size, V vocabulary, n tokens in a chunk, v vocabulary rows in a chunk.
"""
from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """An input or the result holds NaN or inf; the message names which. The trainer skips such a step."""

TOKEN_CHUNK = 1024
"""default tokens per tile"""
TILE_LOGITS = 1024 * 4096
"""default logits per student (or teacher) tile, 16 MiB in float32: with fewer tokens than TOKEN_CHUNK
the vocabulary chunk widens to keep this size (measured on a 2-core CPU: a 256 x 16384 tile ran ~1.4x
faster than a 256 x 4096 one, while 1024 x 4096 and 1024 x 16384 were on par)"""


def fused_self_distill(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                       lm_head_weight: torch.Tensor, tokens: torch.Tensor, *,
                       temperature: float = 1.0, mask: torch.Tensor | None = None,
                       token_chunk: int = TOKEN_CHUNK, vocab_chunk: int | None = None,
                       teacher_weight: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token KL(p_student || q_teacher), student log p(token) and student entropy, each (N,) float.

    p = softmax(student_hidden @ W.T / temperature), q = softmax(teacher_hidden @ W_t.T) with W_t =
    `teacher_weight` (V, H_t) if given, else W; the teacher is detached. `mask` (N,) marks the tokens to
    compute; the others return 0 and get no gradient. Tiles are `token_chunk x vocab_chunk` logits;
    `vocab_chunk=None` sizes them to TILE_LOGITS.
    """
    _check_fused_inputs(student_hidden, teacher_hidden, lm_head_weight, tokens, mask, teacher_weight)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if token_chunk < 1 or (vocab_chunk is not None and vocab_chunk < 1):
        raise ValueError(f"token_chunk and vocab_chunk must be >= 1, got {token_chunk} and {vocab_chunk}")
    rows = None if mask is None else mask.reshape(-1).nonzero().squeeze(1)  # (N_kept,)
    if vocab_chunk is None:
        n_kept = student_hidden.shape[0] if rows is None else rows.shape[0]
        vocab_chunk = -(-TILE_LOGITS // max(1, min(token_chunk, n_kept)) // 256) * 256
    kl, logp, entropy = _FusedSelfDistill.apply(student_hidden, teacher_hidden, lm_head_weight, tokens,
                                                rows, float(temperature), int(token_chunk), int(vocab_chunk),
                                                None if teacher_weight is None else teacher_weight.detach())
    if not bool(torch.isfinite(kl).all() & torch.isfinite(logp).all() & torch.isfinite(entropy).all()):
        _raise_non_finite(lm_head_weight, teacher_weight)
    return kl, logp, entropy


class _FusedSelfDistill(torch.autograd.Function):
    """Autograd Function behind `fused_self_distill`; inputs are validated by the caller."""

    @staticmethod
    def forward(ctx, student_hidden, teacher_hidden, weight, tokens, rows, temperature, token_chunk, vocab_chunk,
                teacher_weight):
        hs, ht, y = _kept_rows(student_hidden, teacher_hidden, tokens, rows, temperature)
        stats = _forward_stats(hs, ht, weight, teacher_weight, y, token_chunk, vocab_chunk)
        ctx.set_materialize_grads(False)
        lse_s, lse_t, kl, logp, entropy = stats
        ctx.save_for_backward(student_hidden, teacher_hidden, weight, tokens, rows, teacher_weight,
                              lse_s, lse_t, kl, entropy)
        ctx.temperature, ctx.token_chunk, ctx.vocab_chunk = temperature, token_chunk, vocab_chunk
        return tuple(_scatter_rows(x, rows, student_hidden.shape[0]) for x in (kl, logp, entropy))

    @staticmethod
    def backward(ctx, grad_kl, grad_logp, grad_entropy):
        student_hidden, teacher_hidden, weight, tokens, rows, teacher_weight, lse_s, lse_t, kl, entropy = \
            ctx.saved_tensors
        need_h, _, need_w = ctx.needs_input_grad[:3]
        if not (need_h or need_w) or (grad_kl is None and grad_logp is None and grad_entropy is None):
            return (None,) * 9
        hs, ht, y = _kept_rows(student_hidden, teacher_hidden, tokens, rows, ctx.temperature)
        g_kl, g_lp, g_ent = (torch.zeros_like(kl) if g is None else _gather_rows(g, rows).to(kl.dtype)
                             for g in (grad_kl, grad_logp, grad_entropy))  # (N_kept,) each
        coef = (g_kl - g_ent, -g_kl, -(g_kl * kl + g_lp + g_ent * entropy))  # (N_kept,) c1, c2, c0
        grad_hs, grad_w = _backward_tiles(hs, ht, weight, teacher_weight, y, lse_s, lse_t, coef, g_lp,
                                          with_teacher=grad_kl is not None, need_w=need_w,
                                          token_chunk=ctx.token_chunk, vocab_chunk=ctx.vocab_chunk)
        grad_h = None
        if need_h:
            grad_h = student_hidden.new_zeros(student_hidden.shape)  # (N, H)
            grad_h[_all_rows(rows, hs.shape[0])] = (grad_hs / ctx.temperature).to(student_hidden.dtype)
        return grad_h, None, grad_w, None, None, None, None, None, None


def _kept_rows(student_hidden, teacher_hidden, tokens, rows, temperature):
    """Kept rows in compute dtype; the student's are divided by the temperature. (n, H), (n, H), (n,)"""
    dtype = _compute_dtype(student_hidden.dtype)
    hs = _gather_rows(student_hidden, rows).to(dtype)  # (N_kept, H)
    if temperature != 1.0:
        hs = hs / temperature
    ht = _gather_rows(teacher_hidden.detach(), rows).to(dtype)  # (N_kept, H)
    return hs, ht, _gather_rows(tokens, rows)


def _forward_stats(hs, ht, weight, teacher_weight, y, token_chunk, vocab_chunk):
    """One pass over vocabulary chunks -> lse_s, lse_t, kl, logp, entropy, each (N_kept,)."""
    # (N_kept,) running statistics, float64 (see the module docstring)
    lse_s, lse_t, e_logp, e_logq = (hs.new_zeros(hs.shape[0], dtype=torch.float64) for _ in range(4))
    chunks = _token_chunks(hs, ht, token_chunk, stack=teacher_weight is None)
    for v0 in range(0, weight.shape[0], vocab_chunk):
        w = weight[v0:v0 + vocab_chunk].to(hs.dtype)  # (v, H)
        w_t = _teacher_chunk(w, teacher_weight, v0, vocab_chunk, hs.dtype)  # (v, H_t)
        for t, pair in chunks:
            chunk = [x.double() for x in _chunk_stats(_logit_tile(pair, w, w_t))]  # (n,) each
            if v0 == 0:
                lse_s[t], lse_t[t], e_logp[t], e_logq[t] = chunk
            else:
                _merge(chunk, lse_s[t], lse_t[t], e_logp[t], e_logq[t])
    z_y = (hs * weight[y].to(hs.dtype)).sum(-1)  # (N_kept,) sampled-token logit / temperature
    return tuple(x.to(hs.dtype) for x in (lse_s, lse_t, e_logp - e_logq, z_y - lse_s, -e_logp))


def _token_chunks(hs, ht, token_chunk, stack):
    """(rows, (student rows, teacher rows, both stacked or None)) per token chunk."""
    chunks = []
    for t0 in range(0, hs.shape[0], token_chunk):
        t = slice(t0, t0 + token_chunk)
        stacked = torch.cat([hs[t], ht[t]]) if stack else None  # (2n, H)
        chunks.append((t, (hs[t], ht[t], stacked)))
    return chunks


def _logit_tile(pair, w, w_t):
    """Student logits / temperature over teacher logits for one tile. (2n, v)"""
    h_s, h_t, stacked = pair
    if stacked is not None:
        return stacked @ w.T
    n = h_s.shape[0]
    tile = h_s.new_empty(2 * n, w.shape[0])  # (2n, v)
    torch.mm(h_s, w.T, out=tile[:n])
    torch.mm(h_t, w_t.T, out=tile[n:])
    return tile


def _chunk_stats(tile):
    """Per-token statistics of one vocabulary chunk of a (2n, v) student-over-teacher logit tile.

    Returns the chunk's student and teacher log-sum-exp and, under the student's distribution
    restricted to the chunk, E[log p_chunk] and E[log q_chunk]; each (n,).
    """
    n = tile.shape[0] // 2
    log_soft = torch.log_softmax(tile, -1)  # (2n, v) log-probs within the chunk
    # both maxima sit at the same entry, so their difference is the chunk's log-sum-exp, exactly
    # (the log-prob maximum lies in [-log v, 0]); amax is half the cost of max-with-indices
    chunk_lse = tile.amax(-1) - log_soft.amax(-1)  # (2n,)
    p = log_soft[:n].exp()  # (n, v)
    # p * log p and p * log q in place of the log-probs, then torch's cascade sum (a bmm row dot is
    # as fast but accumulates ten times more float32 error)
    e_logp, e_logq = log_soft.view(2, n, -1).mul_(p).sum(-1)  # (n,) each
    return chunk_lse[:n], chunk_lse[n:], e_logp, e_logq


def _merge(chunk, lse_s, lse_t, e_logp, e_logq):
    """Fold one chunk's statistics into the running ones (in place).

    Earlier log-probs shift by (lse - new_lse) and their student mass scales by exp(lse_s - new_lse_s);
    the chunk's mass is exp(chunk_lse_s - new_lse_s), and both masses add up to 1.
    """
    c_s, c_t, c_logp, c_logq = chunk
    new_s, new_t = torch.logaddexp(lse_s, c_s), torch.logaddexp(lse_t, c_t)  # (n,)
    keep, add = (lse_s - new_s).exp(), (c_s - new_s).exp()  # (n,)
    e_logp.add_(lse_s - new_s).mul_(keep).add_(add * (c_logp + c_s - new_s))
    e_logq.add_(lse_t - new_t).mul_(keep).add_(add * (c_logq + c_t - new_t))
    lse_s.copy_(new_s)
    lse_t.copy_(new_t)


def _backward_tiles(hs, ht, weight, teacher_weight, y, lse_s, lse_t, coef, g_lp, *, with_teacher, need_w,
                    token_chunk, vocab_chunk):
    """Gradients w.r.t. hs (N_kept, H) and the weight (V, H, weight's dtype) from recomputed tiles.

    With z the temperature-scaled student logits and KL, H per token: dKL/dz_a = p_a (log p_a - log q_a - KL),
    dlogp_y/dz_a = 1[a = y] - p_a, dH/dz_a = -p_a (log p_a + H). The upstream gradients of the three outputs
    combine into G = p (c1 log p + c2 log q + c0) per tile; the sampled token adds g_lp * 1[a = y].
    """
    c1, c2, c0 = (c[:, None] for c in coef)  # (N_kept, 1) each
    if with_teacher:
        c0 = c0 - c2 * lse_t[:, None]  # c2 log q = c2 z_t - c2 lse_t: raw teacher logits suffice
    chunks = _token_chunks(hs, ht, token_chunk, stack=with_teacher and teacher_weight is None)
    grad_hs = torch.addcmul(torch.zeros_like(hs), g_lp[:, None], weight[y].to(hs.dtype))  # (N_kept, H)
    grad_w = torch.zeros_like(weight) if need_w else None  # (V, H)
    # float32 weights accumulate straight into the result; bf16 ones through a float32 chunk
    direct = need_w and grad_w.dtype == hs.dtype
    for v0 in range(0, weight.shape[0], vocab_chunk):
        w = weight[v0:v0 + vocab_chunk].to(hs.dtype)  # (v, H)
        w_t = _teacher_chunk(w, teacher_weight, v0, vocab_chunk, hs.dtype) if with_teacher else None  # (v, H_t)
        grad_w_chunk = None
        if need_w:
            grad_w_chunk = grad_w[v0:v0 + vocab_chunk] if direct else torch.zeros_like(w)  # (v, H)
            _add_sampled_token_grad(grad_w_chunk, v0, y, g_lp, hs)
        for t, pair in chunks:
            grad_z = _tile_grad(pair, w, w_t, lse_s[t], c1[t], c2[t], c0[t])  # (n, v)
            grad_hs[t].addmm_(grad_z, w)
            if need_w:
                grad_w_chunk.addmm_(grad_z.T, pair[0])
        if need_w and not direct:
            grad_w[v0:v0 + vocab_chunk].copy_(grad_w_chunk)
    return grad_hs, grad_w


def _tile_grad(pair, w, w_t, lse_s, c1, c2, c0):
    """G = p (c1 log p + c2 z_teacher + c0) on one tile; without `w_t` the teacher term is skipped. (n, v)"""
    h_s = pair[0]
    if w_t is None:
        log_p = (h_s @ w.T).sub_(lse_s[:, None])  # (n, v)
        grad_z = torch.addcmul(c0, log_p, c1)  # (n, v)
    else:
        tile = _logit_tile(pair, w, w_t)  # (2n, v)
        log_p = tile[:h_s.shape[0]].sub_(lse_s[:, None])  # (n, v)
        grad_z = torch.addcmul(c0, log_p, c1)  # (n, v)
        grad_z.addcmul_(tile[h_s.shape[0]:], c2)
    return grad_z.mul_(log_p.exp_())


def _add_sampled_token_grad(grad_w_chunk, v0, y, g_lp, hs):
    """The 1[a = y] part of dlogp/dz for the weight rows in this chunk (in place)."""
    in_chunk = ((y >= v0) & (y < v0 + grad_w_chunk.shape[0])).nonzero().squeeze(1)  # (k,)
    # index_put_ with accumulate sums repeated tokens like index_add_, which is far slower on CPU
    grad_w_chunk.index_put_((y[in_chunk] - v0,), g_lp[in_chunk, None] * hs[in_chunk], accumulate=True)


def _teacher_chunk(w: torch.Tensor, teacher_weight: torch.Tensor | None, v0: int, vocab_chunk: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """The teacher's rows v0 : v0 + vocab_chunk of its LM head: the student's chunk `w` when it has none. (v, H_t)"""
    return w if teacher_weight is None else teacher_weight[v0:v0 + vocab_chunk].to(dtype)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _gather_rows(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x[rows]


def _all_rows(rows: torch.Tensor | None, n: int):
    return slice(0, n) if rows is None else rows


def _scatter_rows(x: torch.Tensor, rows: torch.Tensor | None, n_all: int) -> torch.Tensor:
    """Kept-row values back to all N rows, 0 where masked. (N,)"""
    if rows is None:
        return x
    out = x.new_zeros(n_all)  # (N,)
    out[rows] = x
    return out


def _check_fused_inputs(student_hidden, teacher_hidden, weight, tokens, mask, teacher_weight=None) -> None:
    named = {"student_hidden": student_hidden, "teacher_hidden": teacher_hidden, "lm_head_weight": weight}
    if teacher_weight is not None:
        named["teacher_weight"] = teacher_weight
    for name, x in named.items():
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() != 2:
            raise ValueError(f"{name} must be a 2-D floating-point tensor, got {_describe(x)}"
                             + (" (flatten (B, T, H) to (N, H))" if isinstance(x, torch.Tensor) and x.dim() == 3 else ""))
    n, hidden = student_hidden.shape
    if teacher_weight is None and teacher_hidden.shape != student_hidden.shape:
        raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} must match student_hidden {(n, hidden)}")
    if weight.shape[1] != hidden:
        raise ValueError(f"lm_head_weight {tuple(weight.shape)} must be (V, H) with H = {hidden} (student_hidden's)")
    if teacher_weight is not None:
        if teacher_hidden.shape[0] != n:
            raise ValueError(f"teacher_hidden {tuple(teacher_hidden.shape)} must have N = {n} rows like student_hidden")
        if teacher_weight.shape != (weight.shape[0], teacher_hidden.shape[1]):
            raise ValueError(f"teacher_weight {tuple(teacher_weight.shape)} must be (V, H_t) = "
                             f"{(weight.shape[0], teacher_hidden.shape[1])}: the student's vocabulary, the teacher's width")
    if tokens.shape != (n,) or tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must be an integer tensor of shape ({n},), got {_describe(tokens)}")
    if mask is not None and mask.shape != (n,):
        raise ValueError(f"mask must have shape ({n},) like tokens, got {_describe(mask)}")
    kept = tokens if mask is None else tokens[mask.bool()]  # (N_kept,) masked slots may hold padding ids
    if kept.numel() and (int(kept.min()) < 0 or int(kept.max()) >= weight.shape[0]):
        raise ValueError(f"tokens must lie in [0, {weight.shape[0]}) (the vocabulary of lm_head_weight), "
                         f"got range [{int(kept.min())}, {int(kept.max())}]")
    for name in ("student_hidden", "teacher_hidden"):
        if not bool(torch.isfinite(named[name]).all()):
            raise NonFiniteError(f"{name} {tuple(named[name].shape)} contains NaN or inf")


def _raise_non_finite(weight: torch.Tensor, teacher_weight: torch.Tensor | None) -> None:
    """Outputs went non-finite although the hidden states are finite: name the culprit."""
    for name, w in (("lm_head_weight", weight), ("teacher_weight", teacher_weight)):
        if w is not None and not bool(torch.isfinite(w).all()):
            raise NonFiniteError(f"{name} {tuple(w.shape)} contains NaN or inf")
    raise NonFiniteError("fused_self_distill produced NaN or inf from finite inputs (logits overflow the compute dtype)")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__
