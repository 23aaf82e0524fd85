"""Per-token teacher-student heatmap of one rollout group: one row per response, one cell per token.

Design choices:
- The cell shows the token text; the colour is one per-token quantity, chosen by `color_by`: the
  full-vocabulary KL(p_t || q_t) the loss distils (sequential scale from 0), the sampled token's log-ratio
  log(q/p) (diverging, red where the teacher finds the token less likely), the Prop. 3.1 token advantage
  A_dist = KL_t - (log p - log q) (computed by the engine's `distill_token_advantage`, so the view never
  re-derives a formula), the student's entropy, or the sampler-vs-trainer log-prob gap of the token (the
  rollout engine's log p minus the trainer's recomputed old log p: where sampling and training disagree).
- Long responses (4096 tokens) do not fit one cell per token: the heatmap draws a window of `width` columns
  from `start`, and `overview_values` summarises the whole response in at most `OVERVIEW_BINS` bins, each the
  value of largest magnitude in its span (a one-token spike is never averaged away). The page and the notebook
  move the window with buttons and by clicking the overview. A response that fits the window (the embedded
  default) shows whole, as before.
- Only the window's cells are built (values, text, hover), so a view sends what it shows and no more.
- Rows of unequal length are padded with None (and NaN, a missing value, becomes None), which plotly leaves blank.
- Hover carries everything needed to read a cell: token, position, student p, teacher q, log(q/p), KL, A_dist,
  entropy, the sampler gap, and the response's advantage and gate.
- Token text goes through `show_token` in every view: whitespace visible, bytes of a partial UTF-8 character
  marked (‹e4›), control characters as their symbols, runs and very long tokens shortened, markup escaped.
"""
from __future__ import annotations

import html
import math

import numpy as np
import plotly.graph_objects as go
import torch

from lab.style import DIVERGING, MONO, SEQUENTIAL, base_layout, empty_figure
from sdpg.losses import distill_token_advantage

COLOR_MODES = {
    "kl": "KL(p‖q) per token",
    "log_ratio": "log q/p of the sampled token",
    "adv_dist": "A_dist = KL − (log p − log q)  (Prop. 3.1)",
    "entropy": "student entropy per token",
    "logp_gap": "sampler − trainer log p of the token",
}
COLORBAR_TITLES = {"kl": "KL", "log_ratio": "log q/p", "adv_dist": "A_dist", "entropy": "entropy", "logp_gap": "Δ log p"}
SIGNED = {"log_ratio", "adv_dist", "logp_gap"}
"""modes drawn on a diverging scale about 0"""
TEXT_COLUMNS = 64
"""above this many token columns the cells are too narrow for text; hover still names each token"""
WINDOW = 64
"""token columns the heatmap shows at once"""
OVERVIEW_BINS = 512
"""the overview strip's columns at most: one per token up to this length, else windows of tokens"""
VISIBLE_WHITESPACE = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍", "": "∅"}
TOKEN_CHARS = 16
"""characters of a token shown in a cell; longer ones are cut with … and their length"""


def show_token(token: str, max_chars: int | None = TOKEN_CHARS) -> str:
    """Token text safe for a plotly cell or HTML: whitespace and control characters visible, each byte of a
    partial UTF-8 character (kept as a lone surrogate by `sdpg.vocab`) as ‹xx›, a run of one character as
    `c×n`, a token longer than `max_chars` cut with …(length); markup characters escaped."""
    token = str(token)
    marks = [_mark(ch) for ch in token] or [VISIBLE_WHITESPACE[""]]
    if len(token) > 3 and len(set(token)) == 1:
        shown = f"{marks[0]}×{len(token)}"
    elif max_chars is not None and len(marks) > max_chars:
        shown = "".join(marks[:max_chars - 1]) + f"…({len(token)})"
    else:
        shown = "".join(marks)
    return html.escape(shown)


def _mark(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:
        return f"‹{code - 0xDC00:02x}›"
    if ch in VISIBLE_WHITESPACE:
        return VISIBLE_WHITESPACE[ch]
    if code < 0x20:
        return chr(0x2400 + code)  # the control picture: ␀ … ␟
    return "␡" if code == 0x7F else ch


def _array(response: dict, field: str) -> np.ndarray | None:
    values = response.get(field)
    return None if values is None or len(values) == 0 else np.array(
        [np.nan if v is None else v for v in values] if isinstance(values, list) else values, dtype=np.float64)


def token_values(response: dict, color_by: str) -> np.ndarray:
    """The per-token quantity `color_by` names, (T,) float64, NaN where the record lacks an input."""
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by={color_by!r} is not one of {sorted(COLOR_MODES)}")
    n = len(response.get("tokens", ()))
    blank = np.full(n, np.nan)
    if color_by in ("kl", "entropy"):
        values = _array(response, color_by)
        return blank if values is None else values
    if color_by == "logp_gap":
        sampler, old = _array(response, "sampler_logp"), _array(response, "old_logp")
        return blank if sampler is None or old is None else sampler - old
    logp, tlogp = _array(response, "student_logp"), _array(response, "teacher_logp")
    if logp is None or tlogp is None:
        return blank
    if color_by == "log_ratio":
        return tlogp - logp
    kl = _array(response, "kl")
    if kl is None:
        return blank
    return distill_token_advantage(torch.from_numpy(kl), torch.from_numpy(logp), torch.from_numpy(tlogp)).numpy()


def value_at(response: dict, field: str, t: int):
    """`response[field][t]`, or None when the field is missing, shorter than t + 1, or NaN there."""
    values = response.get(field)
    if values is None or not 0 <= t < len(values):
        return None
    v = values[t]
    return None if v is None or (isinstance(v, float | np.floating) and not math.isfinite(v)) else v


def response_length(group: dict | None) -> int:
    """Tokens of the group's longest response."""
    return max((len(r.get("tokens", ())) for r in (group or {}).get("responses", [])), default=0)


def window_start(n_tokens: int, start, width: int = WINDOW) -> int:
    """`start` clamped so that the window [start, start + width) lies within the response where it can."""
    return max(0, min(int(start or 0), max(0, n_tokens - width)))


def window_around(n_tokens: int, position: int, width: int = WINDOW) -> int:
    """The window start that centres `position`."""
    return window_start(n_tokens, int(position) - width // 2, width)


def _finite(values: np.ndarray, t: int) -> float | None:
    return float(values[t]) if t < len(values) and math.isfinite(values[t]) else None


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _hover(response: dict, t: int, a_dist: float | None) -> str:
    logp, tlogp = value_at(response, "student_logp", t), value_at(response, "teacher_logp", t)
    p = math.exp(logp) if logp is not None else None
    q = math.exp(tlogp) if tlogp is not None else None
    ratio = tlogp - logp if logp is not None and tlogp is not None else None
    sampler, old = value_at(response, "sampler_logp", t), value_at(response, "old_logp", t)
    gap = sampler - old if sampler is not None and old is not None else None
    gate = "✓ passes" if response.get("gate") else "✗ blocked"
    return (f"token <b>{show_token(response['tokens'][t], 80)}</b> · position {t}<br>"
            f"student p = {_fmt(p, '.4f')}<br>teacher q = {_fmt(q, '.4f')}<br>"
            f"log(q/p) = {_fmt(ratio, '+.3f')}<br>KL(p‖q) = {_fmt(value_at(response, 'kl', t), '.4f')}<br>"
            f"A_dist = {_fmt(a_dist, '+.3f')}<br>entropy = {_fmt(value_at(response, 'entropy', t), '.3f')} · "
            f"sampler − trainer log p = {_fmt(gap, '+.4f')}<br>"
            f"advantage A = {_fmt(response.get('advantage'), '+.3f')} · gate {gate}")


def row_label(i: int, response: dict) -> str:
    mark = "✓" if response.get("correct") else "✗"
    return f"#{i} {mark} A={response.get('advantage', 0.0):+.2f}"


def _cells(values: np.ndarray, lo: int, hi: int) -> list:
    out = [None if not math.isfinite(v) else float(v) for v in values[lo:hi].tolist()]
    return out + [None] * (hi - lo - len(out))


def token_heatmap(group: dict | None, color_by: str = "kl", *, start: int = 0, width: int = WINDOW) -> go.Figure:
    """Heatmap of one group's responses over the token window [start, start + width): z is the chosen per-token
    quantity, the text the token, x the token position."""
    if not group or not group.get("responses"):
        return empty_figure("no rollout records for this step", title="Per-token KL(student ‖ teacher)")
    responses = group["responses"]
    longest = response_length(group)
    lo = window_start(longest, start, width)
    hi = min(longest, lo + width)
    z, text, hover = [], [], []
    for r in responses:
        n = len(r.get("tokens", ()))
        a_dist = token_values(r, "adv_dist")
        values = a_dist if color_by == "adv_dist" else token_values(r, color_by)
        shown = range(lo, min(hi, n))
        z.append(_cells(values, lo, hi))
        text.append([show_token(r["tokens"][t]) for t in shown] + [""] * (hi - lo - len(shown)))
        hover.append([_hover(r, t, _finite(a_dist, t)) for t in shown] + [""] * (hi - lo - len(shown)))
    fig = go.Figure(go.Heatmap(
        z=z, x=list(range(lo, hi)), text=text, hovertext=hover,
        texttemplate="%{text}" if hi - lo <= TEXT_COLUMNS else "",
        hovertemplate="%{hovertext}<extra></extra>", textfont={"family": MONO, "size": 13}, xgap=2, ygap=3,
        colorbar={"title": {"text": COLORBAR_TITLES[color_by]}, "thickness": 12},
        **_color_scale(z, color_by)))
    labels = [row_label(i, r) for i, r in enumerate(responses)]
    fig.update_yaxes(tickvals=list(range(len(responses))), ticktext=labels, autorange="reversed",
                     tickfont={"family": MONO, "size": 12})
    fig.update_xaxes(title_text="token position", showgrid=False, zeroline=False)
    cut = f" · tokens {lo}–{hi - 1} of {longest}" if hi - lo < longest else ""
    title = f"Step {group.get('step', '?')}, group {group.get('group', '?')} — {COLOR_MODES[color_by]}{cut}"
    base_layout(fig, title=title, height=110 + 44 * len(responses))
    fig.update_layout(margin={"l": 120})
    return fig


def overview_values(group: dict | None, color_by: str = "kl", bins: int = OVERVIEW_BINS) -> tuple[np.ndarray, int]:
    """The whole group at a glance: (R, nb) values, each bin the value of largest magnitude among its tokens
    (NaN past a response's end), and the tokens per bin. nb = longest response when it fits `bins`."""
    responses = (group or {}).get("responses", [])
    longest = response_length(group)
    if not responses or not longest:
        return np.zeros((0, 0)), 1
    per = max(1, math.ceil(longest / bins))
    nb = math.ceil(longest / per)
    out = np.full((len(responses), nb * per), np.nan)  # (R, nb * per)
    for i, r in enumerate(responses):
        values = token_values(r, color_by)
        out[i, :len(values)] = values
    blocks = out.reshape(len(responses), nb, per)  # (R, nb, per)
    magnitude = np.where(np.isnan(blocks), -1.0, np.abs(blocks))  # (R, nb, per)
    pick = magnitude.argmax(-1)  # (R, nb)
    return np.take_along_axis(blocks, pick[..., None], -1)[..., 0], per  # (R, nb)


def overview_figure(group: dict | None, color_by: str = "kl", *, start: int = 0, width: int = WINDOW) -> go.Figure:
    """The overview strip as a plotly heatmap (x in token positions) with the shown window outlined; a click on a
    cell gives its position (the notebook widget jumps there)."""
    values, per = overview_values(group, color_by)
    if not values.size:
        return empty_figure("no rollout records for this step", title="Whole response", height=140)
    longest = response_length(group)
    lo = window_start(longest, start, width)
    z = [[None if not math.isfinite(v) else v for v in row] for row in values.tolist()]
    x = [b * per + per / 2 - 0.5 for b in range(values.shape[1])]
    fig = go.Figure(go.Heatmap(z=z, x=x, showscale=False, hovertemplate="tokens near %{x:.0f}: %{z:.3f}<extra></extra>",
                               **_color_scale(z, color_by)))
    fig.add_shape(type="rect", x0=lo - 0.5, x1=min(longest, lo + width) - 0.5, y0=-0.5, y1=values.shape[0] - 0.5,
                  line={"color": "#212529", "width": 2})
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    fig.update_xaxes(range=[-0.5, longest - 0.5], title_text="token position (max per window)")
    base_layout(fig, title=f"Whole response: {longest} tokens", height=80 + 8 * values.shape[0])
    fig.update_layout(margin={"l": 120, "t": 36, "b": 36})
    return fig


def overview_image(group: dict | None, color_by: str = "kl", *, start: int = 0, width: int = WINDOW,
                   pixels: int = 1024, row_px: int = 8) -> np.ndarray | None:
    """The overview strip as an RGB image (rows x `pixels`), the window framed in black: the page shows it and
    turns a click's x pixel into a token position (`overview_position`). None without records."""
    values, _ = overview_values(group, color_by)
    if not values.size:
        return None
    scale = _color_scale(values.tolist(), color_by)
    lo_v, hi_v = scale["zmin"], scale["zmax"]
    cols = np.clip((np.linspace(0, values.shape[1], pixels, endpoint=False)).astype(int), 0, values.shape[1] - 1)
    frac = (values[:, cols] - lo_v) / ((hi_v - lo_v) or 1.0)  # (R, pixels)
    rgb = _colorize(frac, scale["colorscale"])  # (R, pixels, 3)
    rgb[np.isnan(frac)] = 248  # past a response's end
    img = np.repeat(rgb, row_px, axis=0)  # (R * row_px, pixels, 3)
    longest = response_length(group)
    lo = window_start(longest, start, width)
    x0, x1 = int(lo / longest * pixels), max(int(lo / longest * pixels) + 2, int(min(longest, lo + width) / longest * pixels))
    for x in (x0, min(x1, pixels) - 1):
        img[:, max(0, x - 1):x + 1] = 0
    img[:2, x0:x1] = img[-2:, x0:x1] = 0
    return img


def overview_position(x_pixel: int, n_tokens: int, pixels: int = 1024) -> int:
    """The token position under pixel column `x_pixel` of `overview_image`."""
    return max(0, min(n_tokens - 1, int(x_pixel * n_tokens / pixels)))


def _colorize(frac: np.ndarray, colorscale: list) -> np.ndarray:
    stops = np.array([s for s, _ in colorscale])
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for _, c in colorscale], dtype=np.float64)  # (S, 3)
    f = np.clip(np.nan_to_num(frac, nan=0.0), 0, 1)
    return np.stack([np.interp(f, stops, rgb[:, k]) for k in range(3)], -1).astype(np.uint8)  # (..., 3)


def _color_scale(z, color_by: str) -> dict:
    """KL and entropy on a sequential scale from 0; signed quantities on a diverging scale symmetric about 0."""
    finite = [v for row in z for v in row if v is not None and math.isfinite(v)]
    top = max((abs(v) for v in finite), default=1.0) or 1.0
    if color_by not in SIGNED:
        return {"colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": top}
    return {"colorscale": DIVERGING, "zmid": 0.0, "zmin": -top, "zmax": top}
