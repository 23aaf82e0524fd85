"""Views across the recorded steps: a filterable rollout table, and one prompt's groups in step order.

Design choices:
- Both read `RecordStream.group_index()` (one cheap dict per recorded group, no per-token arrays), so a long run
  is searched without loading its token records; a group's detail comes from `rollouts(step)` when asked for.
- Filtering is one pure function over table rows (`filter_rows`): the page, the notebook and the tests call it.
- Text search is a case-insensitive substring match over the response's text head, the prompt and the answer.
- "This prompt across steps" is the recorded groups of one prompt in step order: per step its pass rate, the
  teacher's disagreement on each response (mean and largest per-token KL) and the answers themselves.
- HTML uses inline styles and escapes every recorded text (model outputs are data, never markup).
"""
from __future__ import annotations

import html
import math
from collections import Counter

import plotly.graph_objects as go

from lab.style import COLORS, MONO, base_layout, empty_figure

ANY = "any"
SIGNS = (ANY, "positive", "zero", "negative")
GATES = (ANY, "on", "off")
TABLE_LIMIT = 200
"""rows the table shows at most (the count above it says how many matched)"""


def table_rows(index: list[dict]) -> list[dict]:
    """One row per recorded response: step, group, response #, its scalars, the prompt and the answer."""
    return [{"step": g["step"], "group": g["group"], "response": i, "prompt": g["prompt"], "answer": g["answer"], **r}
            for g in index for i, r in enumerate(g["responses"])]


def filter_rows(rows: list[dict], *, text: str = "", min_reward: float | None = None,
                max_reward: float | None = None, advantage: str = ANY, gate: str = ANY, status: str = ANY) -> list[dict]:
    """The rows matching every filter given; ValueError names a filter value that is not allowed."""
    if advantage not in SIGNS or gate not in GATES:
        raise ValueError(f"advantage filter must be one of {SIGNS} and gate one of {GATES}, got {advantage!r}, {gate!r}")
    needle = (text or "").strip().lower()

    def keep(row: dict) -> bool:
        reward, adv = _number(row.get("reward")), _number(row.get("advantage"))
        return ((not needle or any(needle in str(row.get(k) or "").lower() for k in ("text_head", "prompt", "answer")))
                and (min_reward is None or (reward is not None and reward >= min_reward))
                and (max_reward is None or (reward is not None and reward <= max_reward))
                and (advantage == ANY or (adv is not None and _sign(adv) == advantage))
                and (gate == ANY or bool(row.get("gate")) == (gate == "on"))
                and (status == ANY or row.get("status") == status))

    return [row for row in rows if keep(row)]


def parse_bound(text, name: str) -> float | None:
    """A reward bound typed into a filter box: blank is no bound; ValueError names the box otherwise."""
    if text is None or not str(text).strip():
        return None
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError(f"{name}: {str(text)[:40]!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name}: {text!r} is not a finite number")
    return value


def statuses(rows: list[dict]) -> list[str]:
    """The verifier statuses present, for the status filter."""
    return [ANY, *sorted({str(r.get("status")) for r in rows if r.get("status") is not None})]


def rollout_table_html(rows: list[dict], total: int, limit: int = TABLE_LIMIT) -> str:
    """The matching rows as a table (the first `limit`), under a line saying how many of `total` matched."""
    head = "".join(f"<th style='text-align:left;padding:4px 8px'>{h}</th>" for h in
                   ("step", "group", "#", "reward", "advantage", "gate", "status", "tokens", "KL mean", "KL max",
                    "response"))
    body = "".join(
        f"<tr class='sdpg-table-row' style='border-top:1px solid #f1f3f5'>{_cell(r['step'])}{_cell(r['group'])}"
        f"{_cell(r['response'])}{_cell(_fmt(r.get('reward'), '.2f'), _verdict_color(r.get('correct')))}"
        f"{_cell(_fmt(r.get('advantage'), '+.2f'))}{_cell('on' if r.get('gate') else 'off')}"
        f"{_cell(r.get('status'))}{_cell(r.get('length'))}{_cell(_fmt(r.get('kl_mean'), '.3f'))}"
        f"{_cell(_fmt(r.get('kl_max'), '.3f'))}"
        f"<td style='padding:4px 8px;font-family:{MONO};white-space:pre-wrap;word-break:break-word'>"
        f"{html.escape(str(r.get('text_head') or ''))}</td></tr>" for r in rows[:limit])
    shown = f", the first {limit} shown" if len(rows) > limit else ""
    note = f"<div id='sdpg-table-count'>{len(rows)} of {total} recorded responses match{shown}.</div>"
    return f"{note}<table style='border-collapse:collapse;font-size:13px;width:100%'><tr>{head}</tr>{body}</table>"


def prompt_choices(index: list[dict]) -> list[tuple[str, str]]:
    """(label, prompt) for every recorded prompt, the most often recorded first; the label shows the step count."""
    counts = Counter(g["prompt"] for g in index)
    return [(f"{_one_line(p)[:70]} ({n} step{'s' if n != 1 else ''})", p)
            for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def prompt_groups(index: list[dict], prompt: str) -> list[dict]:
    """The recorded groups of `prompt`, in step order."""
    return sorted((g for g in index if g["prompt"] == prompt), key=lambda g: (g["step"], g["group"]))


def prompt_across_steps_figure(groups: list[dict]) -> go.Figure:
    """Per step, each response's mean KL(student ‖ teacher) (green right, red wrong; size: largest KL) and the
    group's pass rate: how the teacher's disagreement and the answers change as training goes on."""
    if not groups:
        return empty_figure("choose a recorded prompt", title="This prompt across steps")
    fig = go.Figure()
    for correct, name, color in ((True, "right answer", COLORS["positive"]), (False, "wrong answer", COLORS["negative"])):
        points = [(g["step"], r) for g in groups for r in g["responses"]
                  if bool(r.get("correct")) == correct and _number(r.get("kl_mean")) is not None]
        fig.add_trace(go.Scatter(
            x=[s for s, _ in points], y=[r["kl_mean"] for _, r in points], mode="markers", name=name,
            marker={"color": color, "size": [6 + 4 * min(3.0, r.get("kl_max") or 0.0) for _, r in points],
                    "opacity": 0.75},
            text=[html.escape(_one_line(r.get("text_head") or ""))[:80] for _, r in points],
            hovertemplate="step %{x}<br>mean KL %{y:.3f}<br>%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(x=[g["step"] for g in groups], y=[_pass_rate(g) for g in groups], yaxis="y2",
                             mode="lines+markers", name="pass rate", line={"color": COLORS["neutral"], "dash": "dot"}))
    fig.update_layout(xaxis_title="step", yaxis_title="mean KL(student ‖ teacher) per response",
                      yaxis2={"title": "pass rate", "overlaying": "y", "side": "right", "range": [0, 1.05]})
    return base_layout(fig, title=f"This prompt across {len(groups)} recorded step(s)", height=380)


def prompt_steps_html(groups: list[dict]) -> str:
    """One block per recorded step: the pass rate and every answer with its reward, advantage and KL."""
    if not groups:
        return "<div style='color:#868e96'>No recorded group of this prompt.</div>"
    head = (f"<div style='font-family:{MONO};white-space:pre-wrap'><b>prompt</b> {html.escape(groups[0]['prompt'])}"
            f"<br><b>answer</b> {html.escape(str(groups[0]['answer']))}</div>")
    blocks = []
    for g in groups:
        answers = "".join(
            f"<li style='font-family:{MONO};white-space:pre-wrap;color:{_verdict_color(r.get('correct'))}'>"
            f"{'✓' if r.get('correct') else '✗'} adv {_fmt(r.get('advantage'), '+.2f')} · KL mean "
            f"{_fmt(r.get('kl_mean'), '.3f')} max {_fmt(r.get('kl_max'), '.3f')} — "
            f"{html.escape(_one_line(r.get('text_head') or ''))}</li>" for r in g["responses"])
        blocks.append(f"<div class='sdpg-prompt-step'><b>step {g['step']}</b> (group {g['group']}): pass rate "
                      f"{_pass_rate(g):.2f}<ul style='margin:2px 0 8px'>{answers}</ul></div>")
    return head + "".join(blocks)


def _pass_rate(group: dict) -> float:
    responses = group["responses"]
    return sum(bool(r.get("correct")) for r in responses) / len(responses) if responses else math.nan


def _number(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _sign(x: float) -> str:
    return "positive" if x > 0 else "negative" if x < 0 else "zero"


def _fmt(x, spec: str) -> str:
    value = _number(x)
    return "–" if value is None else format(value, spec)


def _cell(value, color: str = "inherit") -> str:
    return f"<td style='padding:4px 8px;color:{color}'>{html.escape(str(value))}</td>"


def _verdict_color(correct) -> str:
    return COLORS["positive"] if correct else COLORS["negative"]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
