"""Per-token teacher-student heatmap of one rollout group: one row per response, one cell per token.

Design choices:
- The cell shows the token text; the colour is one of three per-token quantities, chosen by
  `color_by`: the full-vocabulary KL(p_t || q_t) the loss distils (sequential scale from 0), the
  sampled token's log-ratio log(q/p) (diverging, red where the teacher finds the token less likely),
  or the Prop. 3.1 token advantage A_dist = KL_t - (log p - log q), computed by the engine's
  `distill_token_advantage` so the view never re-derives a formula.
- Rows of unequal length are padded with None, which plotly leaves blank.
- Hover carries everything needed to read a cell: token, student p, teacher q, log(q/p), KL,
  A_dist, and the response's advantage and gate. Whitespace tokens are drawn as visible symbols.
- Long responses are cut at `max_tokens` columns (the title says so); past `TEXT_COLUMNS` columns the
  token text moves to the hover only, since it no longer fits in a cell.
"""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go
import torch

from lab.style import DIVERGING, MONO, SEQUENTIAL, base_layout, empty_figure
from sdpg.losses import distill_token_advantage

COLOR_MODES = {
    "kl": "KL(p‖q) per token",
    "log_ratio": "log q/p of the sampled token",
    "adv_dist": "A_dist = KL − (log p − log q)  (Prop. 3.1)",
}
COLORBAR_TITLES = {"kl": "KL", "log_ratio": "log q/p", "adv_dist": "A_dist"}
TEXT_COLUMNS = 64
"""above this many token columns the cells are too narrow for text; hover still names each token"""
VISIBLE_WHITESPACE = {" ": "␣", "\n": "⏎", "\t": "⇥", "": "∅"}


def show_token(token: str) -> str:
    """Token text safe for a plotly cell: whitespace made visible, markup characters escaped."""
    shown = "".join(VISIBLE_WHITESPACE.get(ch, ch) for ch in token) or VISIBLE_WHITESPACE[""]
    return html.escape(shown)


def token_values(response: dict, color_by: str) -> list[float | None]:
    """The per-token quantity `color_by` names, None where the record lacks an input."""
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by={color_by!r} is not one of {sorted(COLOR_MODES)}")
    kl, logp, tlogp = response.get("kl"), response.get("student_logp"), response.get("teacher_logp")
    n = len(response.get("tokens", []))
    if color_by == "kl":
        return list(kl) if kl else [None] * n
    if not logp or not tlogp:
        return [None] * n
    if color_by == "log_ratio":
        return [None if p is None or q is None else q - p for p, q in zip(logp, tlogp)]
    if not kl or any(v is None for v in (*kl, *logp, *tlogp)):
        return [None] * n
    adv = distill_token_advantage(torch.tensor(kl, dtype=torch.float64), torch.tensor(logp, dtype=torch.float64),
                                  torch.tensor(tlogp, dtype=torch.float64))  # (T,)
    return adv.tolist()


def value_at(response: dict, field: str, t: int):
    """`response[field][t]`, or None when the field is missing or shorter than t + 1."""
    values = response.get(field)
    return values[t] if values and t < len(values) else None


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _hover(response: dict, t: int, a_dist: float | None) -> str:
    logp, tlogp = value_at(response, "student_logp", t), value_at(response, "teacher_logp", t)
    p = math.exp(logp) if logp is not None else None
    q = math.exp(tlogp) if tlogp is not None else None
    ratio = tlogp - logp if logp is not None and tlogp is not None else None
    gate = "✓ passes" if response.get("gate") else "✗ blocked"
    return (f"token <b>{show_token(response['tokens'][t])}</b> · position {t}<br>"
            f"student p = {_fmt(p, '.4f')}<br>teacher q = {_fmt(q, '.4f')}<br>"
            f"log(q/p) = {_fmt(ratio, '+.3f')}<br>KL(p‖q) = {_fmt(value_at(response, 'kl', t), '.4f')}<br>"
            f"A_dist = {_fmt(a_dist, '+.3f')}<br>"
            f"advantage A = {_fmt(response.get('advantage'), '+.3f')} · gate {gate}")


def row_label(i: int, response: dict) -> str:
    mark = "✓" if response.get("correct") else "✗"
    return f"#{i} {mark} A={response.get('advantage', 0.0):+.2f}"


def token_heatmap(group: dict | None, color_by: str = "kl", *, max_tokens: int = 120) -> go.Figure:
    """Heatmap of one group's responses: z is the chosen per-token quantity, the text the token."""
    if not group or not group.get("responses"):
        return empty_figure("no rollout records for this step", title="Per-token KL(student ‖ teacher)")
    responses = group["responses"]
    width = min(max_tokens, max(len(r.get("tokens", [])) for r in responses))
    z, text, hover = [], [], []
    for r in responses:
        tokens = r.get("tokens", [])[:width]
        a_dist = token_values(r, "adv_dist")[:width]
        values = a_dist if color_by == "adv_dist" else token_values(r, color_by)[:width]
        pad = width - len(tokens)
        z.append(values + [None] * pad)
        text.append([show_token(tok) for tok in tokens] + [""] * pad)
        hover.append([_hover(r, t, a_dist[t]) for t in range(len(tokens))] + [""] * pad)
    fig = go.Figure(go.Heatmap(
        z=z, text=text, hovertext=hover, texttemplate="%{text}" if width <= TEXT_COLUMNS else "",
        hovertemplate="%{hovertext}<extra></extra>", textfont={"family": MONO, "size": 13}, xgap=2, ygap=3,
        colorbar={"title": {"text": COLORBAR_TITLES[color_by]}, "thickness": 12},
        **_color_scale(z, color_by)))
    labels = [row_label(i, r) for i, r in enumerate(responses)]
    fig.update_yaxes(tickvals=list(range(len(responses))), ticktext=labels, autorange="reversed",
                     tickfont={"family": MONO, "size": 12})
    fig.update_xaxes(title_text="token position", showgrid=False, zeroline=False)
    longest = max(len(r.get("tokens", [])) for r in responses)
    cut = f" · first {width} of {longest} tokens" if longest > width else ""
    title = f"Step {group.get('step', '?')}, group {group.get('group', '?')} — {COLOR_MODES[color_by]}{cut}"
    base_layout(fig, title=title, height=110 + 44 * len(responses))
    fig.update_layout(margin={"l": 120})
    return fig


def _color_scale(z: list[list[float | None]], color_by: str) -> dict:
    """KL on a sequential scale from 0; signed quantities on a diverging scale symmetric about 0."""
    finite = [v for row in z for v in row if v is not None and math.isfinite(v)]
    top = max((abs(v) for v in finite), default=1.0) or 1.0
    if color_by == "kl":
        return {"colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": top}
    return {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -top, "zmax": top}
