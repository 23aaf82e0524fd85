"""The rollout inspector: a group's prompt, hint and responses as HTML, and top-k next tokens side by side.

Design choices:
- HTML with inline styles only, so the same string renders in the Gradio page and in a notebook.
  Every text from the records is escaped: model outputs are data, never markup.
- Correct / wrong and the advantage sign use the palette's green / red; the gate is a badge.
- The top-k view puts the student's and the teacher's next-token distributions at one position in two
  bar charts sharing the probability axis, with the token that was actually sampled highlighted; its title
  carries the position's entropy and sampler-vs-trainer log-prob gap, the heatmap's other colour modes.
- A response's table row shows its mean entropy and largest sampler-vs-trainer gap; a long response's text is
  cut to its head and tail (`TEXT_HEAD`, `TEXT_TAIL` characters): the heatmap window reaches the middle.
"""
from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.heatmap import show_token, value_at
from lab.style import COLORS, MONO, base_layout, empty_figure

CARD = "border:1px solid #e9ecef;border-radius:10px;padding:10px 14px;margin:6px 0;background:#fff"
LABEL = "font-size:11px;font-weight:600;letter-spacing:.04em;text-transform:uppercase;color:#868e96"
CELL = "padding:4px 8px;border:none;border-top:1px solid #f1f3f5;vertical-align:top"
PRE = f"font-family:{MONO};font-size:13px;white-space:pre-wrap;word-break:break-word;margin:2px 0 0"
TEXT_HEAD, TEXT_TAIL = 1500, 500
"""characters of a long response's text shown from its start and its end"""


def _mean(values) -> str:
    a = np.asarray(values if values is not None else [], dtype=np.float64)
    a = a[np.isfinite(a)]
    return format(float(a.mean()), ".3f") if a.size else "n/a"


def _max_gap(r: dict) -> str:
    if r.get("sampler_logp") is None or r.get("old_logp") is None:
        return "n/a"
    gap = np.abs(np.asarray(r["sampler_logp"], dtype=np.float64) - np.asarray(r["old_logp"], dtype=np.float64))
    gap = gap[np.isfinite(gap)]
    return format(float(gap.max()), ".4f") if gap.size else "n/a"


def _cut(text: str) -> str:
    if len(text) <= TEXT_HEAD + TEXT_TAIL:
        return text
    return f"{text[:TEXT_HEAD]}\n… [{len(text) - TEXT_HEAD - TEXT_TAIL} characters] …\n{text[-TEXT_TAIL:]}"


def _badge(text: str, color: str) -> str:
    return (f"<span style='display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;"
            f"font-weight:600;color:#fff;background:{color}'>{html.escape(text)}</span>")


def _block(label: str, text: str, tint: str = "#f8f9fa") -> str:
    return (f"<div style='{CARD};background:{tint}'><div style='{LABEL}'>{html.escape(label)}</div>"
            f"<pre style='{PRE}'>{html.escape(text or '')}</pre></div>")


def _td(content: str, style: str = "") -> str:
    return f"<td style='{CELL};{style}'>{content}</td>"


def response_row(i: int, r: dict) -> str:
    correct, adv = r.get("correct"), r.get("advantage")
    adv_color = COLORS["positive"] if (adv or 0) > 0 else COLORS["negative"] if (adv or 0) < 0 else COLORS["neutral"]
    verdict = _badge("correct", COLORS["positive"]) if correct else _badge("wrong", COLORS["negative"])
    gate = _badge("gate ✓", COLORS["gate"]) if r.get("gate") else _badge("gate ✗", COLORS["zero"])
    cells = [
        _td(f"#{i}", "color:#868e96"), _td(verdict), _td(f"{r.get('reward', float('nan')):.2f}", "text-align:right"),
        _td("n/a" if adv is None else format(adv, "+.3f"), f"text-align:right;color:{adv_color};font-weight:600"),
        _td(gate), _td(html.escape(str(r.get("status", ""))), "color:#868e96"),
        _td(str(len(r.get("tokens", []))), "text-align:right"),
        _td(_mean(r.get("entropy")), "text-align:right"), _td(_max_gap(r), "text-align:right"),
        _td(f"<pre style='{PRE}'>{html.escape(_cut(str(r.get('text', ''))))}</pre>"),
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def rollout_html(group: dict | None) -> str:
    """Prompt, privileged context, gold answer and a table of the group's responses."""
    if not group:
        return f"<div style='{CARD};color:#868e96'>No rollout records for this step yet.</div>"
    header = "".join(f"<th style='padding:4px 8px;border:none;border-top:1px solid #f1f3f5;text-align:left;{LABEL}'>{h}</th>" for h in
                     ("", "verdict", "reward", "advantage", "gate", "status", "tokens", "entropy", "max |Δ sampler|",
                      "response"))
    rows = "".join(response_row(i, r) for i, r in enumerate(group.get("responses", [])))
    title = f"Step {group.get('step', '?')} · group {group.get('group', '?')}"
    return (f"<div style='font-family:inherit'><div style='font-size:15px;font-weight:600;margin:4px 0'>{title}</div>"
            + _block("prompt (student sees)", group.get("prompt", ""))
            + _block("privileged context (teacher also sees)", group.get("context", ""), "#fff4e6")
            + _block("gold answer", str(group.get("answer", "")), "#ebfbee")
            + f"<div style='{CARD};overflow-x:auto'><table style='border-collapse:collapse;width:100%;border:none'>"
            + f"<thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table></div></div>")


def topk_figure(group: dict | None, response: int, position: int) -> go.Figure:
    """Student vs teacher top-k next-token probabilities at one position of one response."""
    title = "Top-k next tokens: student vs teacher"
    responses = (group or {}).get("responses", [])
    if not 0 <= response < len(responses):
        return empty_figure(f"no response #{response} in this group", title=title)
    r = responses[response]
    tokens = r.get("tokens", [])
    if not 0 <= position < len(tokens):
        return empty_figure(f"response #{response} has no token at position {position}", title=title)
    sampled = tokens[position]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=False, horizontal_spacing=0.14,
                        subplot_titles=("student p (prompt only)", "teacher q (prompt + hint)"))
    for col, (field, role) in enumerate((("student_topk", "student"), ("teacher_topk", "teacher")), start=1):
        pairs = value_at(r, field, position) or []
        labels = [show_token(tok) for tok, _ in pairs]
        probs = [float(p) for _, p in pairs]
        colors = [COLORS[role] if tok == sampled else "#dee2e6" for tok, _ in pairs]
        fig.add_trace(go.Bar(x=probs, y=labels, orientation="h", marker_color=colors, name=role, showlegend=False,
                             text=[f"{p:.3f}" for p in probs], textposition="outside",
                             hovertemplate=f"{role}: %{{y}} p=%{{x:.4f}}<extra></extra>"), row=1, col=col)
        fig.update_yaxes(autorange="reversed", tickfont={"family": MONO, "size": 13}, row=1, col=col)
        fig.update_xaxes(range=[0, 1.15], title_text="probability", row=1, col=col)
    logp, tlogp = value_at(r, "student_logp", position), value_at(r, "teacher_logp", position)
    detail = "" if logp is None or tlogp is None else f" (p={math.exp(logp):.3f}, q={math.exp(tlogp):.3f})"
    entropy, sampler, old = (value_at(r, f, position) for f in ("entropy", "sampler_logp", "old_logp"))
    if entropy is not None:
        detail += f" · entropy {entropy:.3f}"
    if sampler is not None and old is not None:
        detail += f" · sampler − trainer log p {sampler - old:+.4f}"
    base_layout(fig, title=f"Response #{response}, position {position} of {len(tokens)}: sampled "
                     f"'{show_token(sampled)}'{detail}",
                height=300)
    return fig
