"""Privileged-context playground views: one response seen by the teacher under several contexts.

Design choices:
- Input is `sdpg.playground`'s plain dicts: a probe (`probe_response`) with one entry per context variant,
  and a ranked gap table (`context_gap`). Nothing here computes a model quantity.
- Variants sit side by side as rows of one heatmap over the same response tokens, so a column reads as
  "this token under every context"; the quantity is chosen like the Token KL tab's (`PROBE_FIELDS`).
- The sanity variant (the teacher sees the student's own prompt) is kept in every view: its blank KL
  row is the check that the picture is honest.
"""
from __future__ import annotations

import html

import plotly.graph_objects as go

from lab.heatmap import TEXT_COLUMNS, show_token
from lab.style import COLORS, DIVERGING, MONO, SEQUENTIAL, base_layout, empty_figure

PROBE_FIELDS = {
    "kl": "KL(p‖q) per token",
    "teacher_logp": "teacher log q of the token",
    "adv_dist": "A_dist = KL − (log p − log q)  (Prop. 3.1)",
    "weight_sdpg": "SDPG gradient weight on the token",
}
VARIANT_COLORS = ["#f08c2e", "#8e44ad", "#1f9d55", "#c92a2a", "#0b7285", "#e8590c", "#868e96", "#d6336c"]


def variant_heatmap(probe: dict | None, field: str = "kl") -> go.Figure:
    """One row per context variant, one cell per response token, coloured by `field` (see PROBE_FIELDS)."""
    if not probe or not probe.get("variants"):
        return empty_figure("probe a response to see the teacher under each context", title="Context variants")
    if field not in PROBE_FIELDS:
        raise ValueError(f"field={field!r} is not one of {sorted(PROBE_FIELDS)}")
    tokens, variants = probe["tokens"], probe["variants"]
    z = [v[field] for v in variants]
    hover = [[_hover(probe, v, t) for t in range(len(tokens))] for v in variants]
    text = [[show_token(tok) for tok in tokens] for _ in variants] if len(tokens) <= TEXT_COLUMNS else None
    scale = ({"colorscale": SEQUENTIAL, "zmin": 0.0, "zmax": max(1e-6, max(max(r) for r in z))} if field == "kl"
             else {"colorscale": SEQUENTIAL[::-1] if field == "teacher_logp" else DIVERGING} | _centred(z, field))
    fig = go.Figure(go.Heatmap(z=z, x=list(range(len(tokens))), y=[_label(v) for v in variants], text=text,
                               texttemplate="%{text}" if text else None, hovertext=hover, hoverinfo="text",
                               xgap=2, ygap=3, colorbar={"title": {"text": field}}, **scale))
    fig.update_yaxes(autorange="reversed", tickfont={"family": MONO})
    fig.update_xaxes(title="response token position")
    return base_layout(fig, title=f"{PROBE_FIELDS[field]} — the same response, teacher under each context",
                       height=140 + 44 * len(variants))


def _centred(z: list[list[float]], field: str) -> dict:
    if field == "teacher_logp":
        return {"zmax": 0.0, "zmin": min(min(r) for r in z)}
    bound = max(1e-6, max(abs(x) for r in z for x in r))
    return {"zmin": -bound, "zmax": bound}


def _label(variant: dict) -> str:
    return f"{variant['name']}  (KL {variant['kl_mean']:.3f})"


def _hover(probe: dict, v: dict, t: int) -> str:
    return (f"<b>{html.escape(v['name'])}</b> · token {t} {show_token(probe['tokens'][t])}<br>"
            f"log p {v['student_logp'][t]:.3f} · log q {v['teacher_logp'][t]:.3f}<br>KL {v['kl'][t]:.4f} · "
            f"A_dist {v['adv_dist'][t]:+.3f} · weight {v['weight_sdpg'][t]:+.3f}")


def logq_figure(probe: dict | None) -> go.Figure:
    """The teacher's log q of each response token per variant, over the student's log p (dashed)."""
    if not probe or not probe.get("variants"):
        return empty_figure("no probe yet", title="Teacher log q per token")
    fig = go.Figure()
    x = list(range(len(probe["tokens"])))
    ticks = [show_token(t) for t in probe["tokens"]]
    fig.add_trace(go.Scatter(x=x, y=probe["student_logp"], name="student log p", mode="lines+markers",
                             line={"color": COLORS["student"], "dash": "dash", "width": 3}))
    for i, v in enumerate(probe["variants"]):
        fig.add_trace(go.Scatter(x=x, y=v["teacher_logp"], name=v["name"], mode="lines+markers",
                                 line={"color": VARIANT_COLORS[i % len(VARIANT_COLORS)]}))
    fig.update_xaxes(tickvals=x, ticktext=ticks if len(x) <= TEXT_COLUMNS else None, title="response token")
    fig.update_yaxes(title="log-probability of the sampled token")
    return base_layout(fig, title="Teacher log q of each response token, per context (student log p dashed)", height=380)


def probe_summary_html(probe: dict | None) -> str:
    """Per variant: context, mean and total KL, total log q, and the SDPG loss terms on this response."""
    if not probe or not probe.get("variants"):
        return "<p><i>No probe yet: pick a recorded response or type one, then press Probe.</i></p>"
    head = ("<tr><th>context variant</th><th>teacher sees (after the prompt)</th><th>mean KL</th><th>Σ log q</th>"
            "<th>loss/distill</th><th>loss/total</th><th>mean weight</th></tr>")
    rows = []
    for v in probe["variants"]:
        mean_w = sum(v["weight_sdpg"]) / len(v["weight_sdpg"])
        rows.append(f"<tr><td><b>{html.escape(v['name'])}</b></td><td><code>{html.escape(repr(v['context']))}</code></td>"
                    f"<td>{v['kl_mean']:.4f}</td><td>{v['teacher_logq_sum']:.2f}</td>"
                    f"<td>{v['loss']['loss/distill']:.5f}</td><td>{v['loss']['loss/total']:.4f}</td><td>{mean_w:+.3f}</td></tr>")
    note = (f"Response advantage A = {probe['advantage']:+.2f}, β = {probe['variants'][0]['beta']:g} at step "
            f"{probe['step']}, temperature {probe['temperature']:g}; the loss is on-policy (ratio 1), without the α anchor.")
    return _table(head, rows, note)


def topk_html(probe: dict | None, position: int) -> str:
    """Top-5 next tokens at one position: the student's, then the teacher's under every variant."""
    if not probe or not probe.get("variants"):
        return ""
    n = len(probe["tokens"])
    if not 0 <= position < n:
        return f"<p><i>position {position} is outside the response (0 … {n - 1})</i></p>"
    columns = [("student", probe["student_topk"][position])] + [(v["name"], v["teacher_topk"][position]) for v in probe["variants"]]
    head = "<tr>" + "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns) + "</tr>"
    rows = ["<tr>" + "".join(f"<td><code>{show_token(tok)}</code> {p:.3f}</td>" for tok, p in (col[1][r] for col in columns))
            + "</tr>" for r in range(len(columns[0][1]))]
    return _table(head, rows, f"Top-5 at position {position}: the sampled token is <code>{show_token(probe['tokens'][position])}</code>.")


def gap_table_html(table: list[dict] | None) -> str:
    """The ranked student–self-teacher gap per context (largest first)."""
    if not table:
        return "<p><i>No gap measured yet: press Measure gap.</i></p>"
    head = ("<tr><th>rank</th><th>context</th><th>teacher pass@1</th><th>student pass@1</th><th>gap</th>"
            "<th>mean KL on student's responses</th></tr>")
    rows = [f"<tr><td>{i + 1}</td><td><b>{html.escape(r['variant'])}</b></td><td>{r['teacher_pass@1']:.3f}</td>"
            f"<td>{r['student_pass@1']:.3f}</td><td style='color:{_sign_color(r['gap'])}'><b>{r['gap']:+.3f}</b></td>"
            f"<td>{r['kl_mean']:.4f}</td></tr>" for i, r in enumerate(table)]
    first = table[0]
    note = (f"{first['problems']} problems × {first['samples']} samples each. A larger initial gap predicts more gain "
            "from training with that context.")
    return _table(head, rows, note)


def _sign_color(x: float) -> str:
    return COLORS["positive"] if x > 0 else COLORS["negative"] if x < 0 else COLORS["neutral"]


def _table(head: str, rows: list[str], note: str) -> str:
    style = ("<style>.sdpg-pg td,.sdpg-pg th{padding:4px 10px;border-bottom:1px solid #e9ecef;text-align:left}"
             ".sdpg-pg th{background:#f8f9fa}</style>")
    return (f"{style}<table class='sdpg-pg' style='border-collapse:collapse;font-size:13px'>{head}{''.join(rows)}</table>"
            f"<p style='color:#495057;font-size:12px'>{note}</p>")
