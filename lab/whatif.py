"""What-if token weights: how each method would weight the tokens of one recorded response.

Design choices:
- The weights themselves come from the engine (`sdpg.whatif.token_weights`), as a dict
  method name -> per-token weights; this view only draws that dict, one heatmap row per method, so
  methods line up token by token and differences in where the weight lands are read down a column.
- Signed weights use the diverging scale centred on 0 (a token pushed down is red, up is blue);
  the token text is written in each cell, as in the KL heatmap.
"""
from __future__ import annotations

import math

import plotly.graph_objects as go

from lab.heatmap import show_token
from lab.style import DIVERGING, METHOD_COLORS, MONO, base_layout, empty_figure

TITLE = "What-if: per-token weight under each method"


def whatif_figure(weights: dict[str, list[float]] | None, tokens: list[str], *, label: str = "") -> go.Figure:
    """Heatmap with one row per method (in the dict's order) and one column per token."""
    if not weights or tokens is None or len(tokens) == 0:
        return empty_figure("no response selected", title=TITLE)
    for method, w in weights.items():
        if len(w) != len(tokens):
            raise ValueError(f"what-if weights for {method!r} have {len(w)} values for {len(tokens)} tokens")
    methods = list(weights)
    z = [[None if v is None or not math.isfinite(v) else float(v) for v in weights[m]] for m in methods]
    top = max((abs(v) for row in z for v in row if v is not None), default=1.0) or 1.0
    text = [[show_token(t) for t in tokens] for _ in methods]
    hover = [[f"{m.upper()} · token <b>{show_token(t)}</b> · position {i}<br>weight {'n/a' if v is None else format(v, '+.4f')}"
              for i, (t, v) in enumerate(zip(tokens, row))] for m, row in zip(methods, z)]
    fig = go.Figure(go.Heatmap(z=z, text=text, hovertext=hover, texttemplate="%{text}",
                               hovertemplate="%{hovertext}<extra></extra>", colorscale=DIVERGING, zmid=0.0,
                               zmin=-top, zmax=top, xgap=2, ygap=3, textfont={"family": MONO, "size": 13},
                               colorbar={"title": {"text": "weight"}, "thickness": 12}))
    labels = [f"<span style='color:{METHOD_COLORS.get(m, '#212529')}'><b>{m.upper()}</b></span>" for m in methods]
    fig.update_yaxes(tickvals=list(range(len(methods))), ticktext=labels, autorange="reversed",
                     tickfont={"family": MONO, "size": 12})
    fig.update_xaxes(title_text="token position", showgrid=False, zeroline=False)
    return base_layout(fig, title=TITLE + (f" — {label}" if label else ""), height=130 + 46 * len(methods))
