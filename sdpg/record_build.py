"""Per-token rollout records built where the tensors live: top-k, log-probs, KL and entropy as arrays, one transfer.

Legend: M recorded response tokens of a micro-batch, H hidden size, V vocabulary, k top-k width.

Design choices:
- Record builders live with the records (`sdpg.records.RESPONSE_FIELDS`), not in a trainer; both trainers call
  `token_records` on their micro-batch's recorded rows and `group_record` at the end of a step.
- Everything per token stays a tensor on the model's device until one host copy: the float fields and the int32
  ids (bit-cast to float32, so one tensor carries both) are packed into one (M, F) tensor and moved at once; the
  rows become numpy arrays (views into that copy). No Python list per token or per top-k entry is ever made.
- Student and teacher top-k come from one vocabulary scan (`sdpg.forward.vocab_scan`): the LM head is read once
  for all recorded responses of the micro-batch, and nothing of size (M, V) exists.
- Token strings come from the tokenizer's cached id -> string table (`sdpg.vocab.string_table`); a record holds
  the ids (`token_ids`, `TopK.ids`) and that table, and the store keeps each string once per run.
- `sampler_logp` is the rollout engine's log-prob of each token (`Rollout.old_logp` before any recompute), so the
  views can show the sampler-vs-trainer gap token by token; the caller passes it, NaN where the sampler gave none.
"""
from __future__ import annotations

import numpy as np
import torch

from sdpg.forward import vocab_scan
from sdpg.record_store import TopK
from sdpg.vocab import string_table

TOPK = 5
FLOATS = ("student_logp", "teacher_logp", "old_logp", "sampler_logp", "kl", "entropy", "ref_logp")
"""the float32 per-token fields, in the order of the packed host copy's first columns"""
_ARGS = ("logp", None, "old_logp", "sampler_logp", "kl", "entropy", "ref_logp")
"""the `token_records` argument behind each of FLOATS (the teacher's log-prob comes from the scan)"""


@torch.no_grad()
def token_record(tokenizer, weight: torch.Tensor, temperature: float, student_h: torch.Tensor, teacher_h: torch.Tensor,
                 ids: torch.Tensor, *, kl: torch.Tensor, logp: torch.Tensor, entropy: torch.Tensor,
                 old_logp: torch.Tensor, ref_logp: torch.Tensor | None = None,
                 sampler_logp: torch.Tensor | None = None) -> dict:
    """The per-token arrays of one response for the record stream (`sdpg.records.RESPONSE_FIELDS`).

    `student_h`, `teacher_h` (n, H) are the final hidden states predicting the n response tokens `ids` (n,);
    `weight` (V, H) is the LM head; the other tensors are (n,). `ref_logp` / `sampler_logp` None leave them out.
    """
    return token_records(tokenizer, weight, temperature, [
        {"student_h": student_h, "teacher_h": teacher_h, "ids": ids, "kl": kl, "logp": logp, "entropy": entropy,
         "old_logp": old_logp, "ref_logp": ref_logp, "sampler_logp": sampler_logp}])[0]


@torch.no_grad()
def token_records(tokenizer, weight: torch.Tensor, temperature: float, responses: list[dict]) -> list[dict]:
    """`token_record` of several responses, each a dict of its arguments (as `sdpg.step.MicroResult.records` holds
    them, plus an optional "sampler_logp"), in one pass over the vocabulary and one host copy."""
    if not responses:
        return []
    ids = torch.cat([r["ids"] for r in responses])  # (M,)
    m, dev = ids.shape[0], ids.device
    # student and teacher rows share one pass over the vocabulary: no (M, V) tensor at a real vocabulary
    hidden = torch.cat([r["student_h"] for r in responses] + [r["teacher_h"] for r in responses])  # (2M, H)
    temps = torch.tensor([temperature] * m + [1.0] * m, device=dev)[:, None]  # (2M, 1)
    probs, top_ids, scan_logp = vocab_scan(hidden, weight, torch.cat([ids, ids]), TOPK, temperature=temps)
    k = top_ids.shape[1]
    floats = torch.stack([scan_logp[m:] if arg is None else _cat(responses, arg, m, dev)
                          for arg in _ARGS], 1)  # (M, 7)
    ints = torch.cat([ids[:, None], top_ids[:m], top_ids[m:]], 1).to(torch.int32).view(torch.float32)  # (M, 1+2k)
    host = torch.cat([floats, probs[:m].float(), probs[m:].float(), ints], 1).cpu().numpy()  # (M, 7+4k+1), one copy
    n_float = len(FLOATS)
    id_cols = host[:, n_float + 2 * k:].view(np.int32)  # (M, 1+2k)
    table = string_table(tokenizer, np.unique(id_cols))
    out, lo = [], 0
    for r in responses:
        hi = lo + r["ids"].shape[0]
        rec = {"token_ids": id_cols[lo:hi, 0], "tokens": table[id_cols[lo:hi, 0]]}
        rec |= {f: host[lo:hi, j] for j, f in enumerate(FLOATS) if f == "teacher_logp" or r.get(_ARGS[j]) is not None}
        rec["student_topk"] = TopK(id_cols[lo:hi, 1:1 + k], host[lo:hi, n_float:n_float + k].astype(np.float16), table)
        rec["teacher_topk"] = TopK(id_cols[lo:hi, 1 + k:], host[lo:hi, n_float + k:n_float + 2 * k].astype(np.float16),
                                   table)
        out.append(rec)
        lo = hi
    return out


def _cat(responses: list[dict], arg: str, m: int, device) -> torch.Tensor:
    """The responses' `arg` tensors end to end as float32 (M,), NaN for a response without one."""
    parts = [r[arg].float() if r.get(arg) is not None else torch.full((r["ids"].shape[0],), float("nan"), device=device)
             for r in responses]
    return torch.cat(parts).to(device)  # (M,)


def group_record(index: int, row, texts: list[str], rewards: list[float], verdicts: list,
                 adv: list[float], gates: list[bool], token_records: list[dict]) -> dict:
    """One rollout group for the record stream (`sdpg.records.ROLLOUT_FIELDS`): its row (a `sdpg.data.PromptRow`),
    and per response the text, reward, verdict, advantage, gate verdict and the per-token arrays of `token_record`."""
    responses = [{"text": text, "reward": float(reward), "correct": bool(v.correct), "status": v.status,
                  "advantage": float(a), "gate": bool(gate), **rec}
                 for text, reward, v, a, gate, rec in zip(texts, rewards, verdicts, adv, gates, token_records,
                                                          strict=True)]
    return {"group": index, "prompt": row.prompt, "context": row.context, "answer": row.answer, "responses": responses}


def group_records(rows: list, texts: list[str], rewards: list[float], verdicts: list, adv: list[float],
                  gates: list[bool], token_records: dict[int, dict], group_size: int) -> list[dict]:
    """The step's recorded groups, `group_record` each: the first groups, whose responses all have per-token records
    (`token_records`: response index -> record). `rows` has one row per group; the other lists one entry per
    response, group after group (`gates`: `sdpg.step.record_gates`). Both trainers assemble their records here."""
    g = group_size
    return [group_record(gi, rows[gi], texts[gi * g:(gi + 1) * g],
                         rewards[gi * g:(gi + 1) * g], verdicts[gi * g:(gi + 1) * g], adv[gi * g:(gi + 1) * g],
                         gates[gi * g:(gi + 1) * g], [token_records[i] for i in range(gi * g, (gi + 1) * g)])
            for gi in range(len(token_records) // g)]
