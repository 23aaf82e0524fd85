"""Method-comparison figures from the comparison data (`experiments.compare`, `docs/compare.json`).

Design choices:
- Input is the comparison's plain dict: `variants`, `summary` (per-variant seed statistics) and the flat
  `curves` / `evals` rows (one per run and step, tagged with `variant` and `seed`).
- Curves show the mean over seeds per step; each method keeps its colour from `lab.style`, ablations
  (a method name plus a suffix) take their method's colour with a dash pattern each.
"""
from __future__ import annotations

import math
import statistics

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.style import COLORS, METHOD_COLORS, base_layout
from sdpg.metrics import label

PANELS = [(table, key, label(key)) for table, key in (
    ("evals", "eval/pass@1"), ("evals", "eval/teacher_pass@1"), ("curves", "reward/mean"), ("curves", "entropy/mean"),
    ("curves", "kl/distill_mean"), ("curves", "response/length_mean"))]
"""(table, metric key, title): titles are the metric registry's labels"""


def comparison_figures(data: dict) -> dict[str, go.Figure]:
    """{"compare_curves": six panels of mean-over-seeds curves, "compare_final": final pass@1 bars}."""
    names = list(data["variants"])
    styles = variant_styles(names)
    curves = make_subplots(rows=2, cols=3, subplot_titles=[p[2] for p in PANELS])
    for name in names:
        color, dash = styles[name]
        for j, (table, key, _) in enumerate(PANELS):
            steps, means = mean_curve(data[table], name, key)
            curves.add_trace(go.Scatter(x=steps, y=means, name=name, legendgroup=name, showlegend=j == 0,
                                        mode="lines+markers" if table == "evals" else "lines",
                                        line={"color": color, "dash": dash}),
                             row=j // 3 + 1, col=j % 3 + 1)
    base_layout(curves, title="Method comparison: mean over seeds", height=640)
    final = [data["summary"][n]["final_pass@1"] for n in names]
    bars = go.Figure(go.Bar(x=names, y=[f["mean"] for f in final], marker_color=[styles[n][0] for n in names],
                            error_y={"type": "data", "array": [0.0 if math.isnan(f["std"]) else f["std"] for f in final]}))
    base_layout(bars, title="Final held-out pass@1 (mean ± std over seeds)", height=420)
    bars.update_yaxes(title="pass@1")
    return {"compare_curves": curves, "compare_final": bars}


def variant_styles(names: list[str]) -> dict[str, tuple[str, str]]:
    """Colour and dash per variant: its method's colour; solid for the method itself, and a dash pattern of
    its own for each ablation of that method (a method name plus a suffix); unknown names are grey."""
    styles, used = {}, {}
    for name in names:
        method = name if name in METHOD_COLORS else next(
            (m for m in sorted(METHOD_COLORS, key=len, reverse=True) if name.startswith(m + "-")), None)
        if method is None:
            styles[name] = (COLORS["neutral"], "dot")
        elif method == name:
            styles[name] = (METHOD_COLORS[method], "solid")
        else:
            used[method] = used.get(method, -1) + 1
            styles[name] = (METHOD_COLORS[method], ABLATION_DASHES[used[method] % len(ABLATION_DASHES)])
    return styles


ABLATION_DASHES = ("dash", "dot", "dashdot", "longdash", "longdashdot")


def mean_curve(rows: list[dict], variant: str, key: str) -> tuple[list[int], list[float]]:
    """Steps and the mean over seeds of `key` for one variant (rows without a numeric `key` are skipped)."""
    by_step: dict[int, list[float]] = {}
    for r in rows:
        if r["variant"] == variant and isinstance(r.get(key), (int, float)):
            by_step.setdefault(r["step"], []).append(r[key])
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[s]) for s in steps]
