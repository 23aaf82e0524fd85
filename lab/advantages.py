"""Group advantages: one step's distribution, and how the distribution moves over the run.

Design choices:
- Counts are binned here (numpy) rather than by plotly in the browser, so the figure data holds the
  exact counts and a test can check them.
- Bins are symmetric about 0 with an odd count, so the centre bin holds the zero advantages of
  zero-variance groups (every reward equal: no outcome signal and, with the gate, no distillation).
  Bars are coloured by sign: red for pushed-down responses, green for pushed-up, grey for none.
- The evolution view normalises each step to shares, so steps with different batch sizes compare.
"""
from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go

from lab.curves import series, thin_rows
from lab.style import COLORS, COUNTS, base_layout, empty_figure
from sdpg.metrics import label

ADV_KEY = "adv/values"


def _finite(values) -> list[float]:
    return [float(v) for v in values or [] if isinstance(v, (int, float)) and math.isfinite(v)]


def advantage_edges(values: list[float], bins: int = 21) -> np.ndarray:
    """`bins` equal-width bin edges spanning [-m, m] with m = max |value| (at least 1e-6), bins made odd."""
    bins = bins + 1 - bins % 2
    top = max((abs(v) for v in values), default=1.0)
    top = max(top, 1e-6) * (1 + 1e-9)  # the largest value falls inside the last bin
    return np.linspace(-top, top, bins + 1)  # (bins+1,)


def advantage_histogram(row: dict | None, *, bins: int = 21) -> go.Figure:
    """Bar chart of one metrics row's advantages, titled with zero-variance share and gate pass rate."""
    values = _finite((row or {}).get(ADV_KEY))
    if not values:
        return empty_figure("no advantages recorded for this step", title="Advantage distribution")
    edges = advantage_edges(values, bins)
    counts, _ = np.histogram(values, bins=edges)  # (bins,)
    centres = (edges[:-1] + edges[1:]) / 2  # (bins,)
    width = edges[1] - edges[0]
    colors = [COLORS["zero"] if lo <= 0 <= hi else COLORS["positive"] if c > 0 else COLORS["negative"]
              for lo, hi, c in zip(edges[:-1], edges[1:], centres)]
    fig = go.Figure(go.Bar(x=centres.tolist(), y=counts.tolist(), width=width * 0.92, marker_color=colors,
                           customdata=np.stack([edges[:-1], edges[1:]], -1).tolist(),
                           hovertemplate="A in [%{customdata[0]:.2f}, %{customdata[1]:.2f})<br>"
                                         "%{y} responses<extra></extra>"))
    parts = [f"{len(values)} responses"]
    for key in ("adv/zero_var_groups", "gate/fraction"):
        if isinstance(row.get(key), (int, float)):
            parts.append(f"{label(key)} {row[key]:.0%}")
    fig.update_xaxes(title_text="group advantage A", zeroline=True, zerolinecolor="#ced4da")
    fig.update_yaxes(title_text="responses")
    base_layout(fig, title=f"Advantage distribution · step {row.get('step', '?')}", height=340)
    fig.update_layout(title_subtitle_text=" · ".join(parts), margin={"t": 72})
    return fig


def advantage_evolution(metrics: list[dict], *, bins: int = 31) -> go.Figure:
    """Heatmap over steps x advantage bins of each step's share of responses, plus the zero-var share."""
    rows = thin_rows([r for r in metrics if _finite(r.get(ADV_KEY))])
    if not rows:
        return empty_figure("no advantages recorded yet", title="Advantage distribution over steps")
    edges = advantage_edges([v for r in rows for v in _finite(r[ADV_KEY])], bins)
    centres = ((edges[:-1] + edges[1:]) / 2).tolist()
    shares = []
    for r in rows:
        counts, _ = np.histogram(_finite(r[ADV_KEY]), bins=edges)  # (bins,)
        shares.append((counts / counts.sum()).tolist())
    steps = [r["step"] for r in rows]
    fig = go.Figure(go.Heatmap(x=steps, y=centres, z=np.array(shares).T.tolist(), colorscale=COUNTS, zmin=0,
                               colorbar={"title": {"text": "share"}, "thickness": 12, "x": 1.16},
                               hovertemplate="step %{x}<br>A ≈ %{y:.2f}<br>share %{z:.1%}<extra></extra>"))
    zx, zy = series(thin_rows(metrics), "adv/zero_var_groups")
    name = label("adv/zero_var_groups")
    fig.add_trace(go.Scatter(x=zx, y=zy, yaxis="y2", name=name, mode="lines+markers", showlegend=True,
                             line={"color": COLORS["zero_var"], "width": 2}, marker={"size": 5},
                             hovertemplate=f"step %{{x}}<br>{name} %{{y:.0%}}<extra></extra>"))
    fig.update_layout(yaxis={"title": {"text": "group advantage A"}},
                      yaxis2={"title": {"text": "zero-variance share"}, "overlaying": "y", "side": "right",
                              "range": [0, 1], "tickformat": ".0%", "showgrid": False},
                      xaxis={"title": {"text": "step"}},
                      legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"})
    base_layout(fig, title="Advantage distribution over steps", height=340)
    fig.update_layout(margin={"r": 110})
    return fig
