"""One look for every figure: palette, fonts and the base layout the views start from.

Design choices:
- Colours carry meaning and stay fixed across views: the student is blue, the teacher orange,
  rewards green, KL terms purple, the reference anchor grey-brown; each training method has its own
  colour wherever methods are compared, the one its registry entry names (`METHOD_COLORS` reads the registry).
- Diverging quantities (log-ratios, advantages, token weights) use one diverging scale centred on 0;
  non-negative ones (KL) a sequential scale starting at white, so "no signal" always looks blank.
- Figures are plain `go.Figure`s with a white template; the dashboard and notebooks add no styling.
"""
from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from sdpg.methods import METHODS

FONT = "Inter, 'Segoe UI', 'Helvetica Neue', Arial, sans-serif"
MONO = "'JetBrains Mono', 'DejaVu Sans Mono', Menlo, Consolas, monospace"

COLORS = {
    "student": "#2f6fdf", "teacher": "#f08c2e", "reward": "#1f9d55", "accuracy": "#0f766e",
    "eval": "#7c3aed", "kl": "#8e44ad", "ref": "#8d6e63", "entropy": "#d6336c", "length": "#4263eb",
    "loss": "#343a40", "pg": "#1971c2", "grad": "#e8590c", "beta": "#8e44ad", "planned": "#adb5bd",
    "perf": "#0b7285", "gate": "#1f9d55", "zero_var": "#c92a2a", "neutral": "#868e96",
    "positive": "#2b8a3e", "negative": "#c92a2a", "zero": "#adb5bd",
}


class _MethodColors(Mapping):
    """Method name -> colour, read from the method registry (`MethodSpec.color`) at each lookup, so a method
    registered at any time is drawn in its own colour."""

    def __getitem__(self, name: str) -> str:
        return METHODS[name].color

    def __iter__(self):
        return iter(METHODS)

    def __len__(self) -> int:
        return len(METHODS)


METHOD_COLORS = _MethodColors()
SEQUENTIAL = [[0.0, "#ffffff"], [0.15, "#f3e8fd"], [0.45, "#c59be8"], [0.75, "#8e44ad"], [1.0, "#4a1670"]]
DIVERGING = [[0.0, "#b2182b"], [0.25, "#ef8a62"], [0.5, "#f7f7f7"], [0.75, "#67a9cf"], [1.0, "#2166ac"]]
COUNTS = [[0.0, "#ffffff"], [0.2, "#d0ebff"], [0.6, "#4dabf7"], [1.0, "#1864ab"]]


def base_layout(fig: go.Figure, *, title: str | None = None, height: int | None = None) -> go.Figure:
    """Apply the shared template, fonts and margins (in place) and return the figure."""
    fig.update_layout(
        template="plotly_white", font={"family": FONT, "size": 12, "color": "#212529"},
        title={"text": title, "x": 0.01, "xanchor": "left", "font": {"size": 15}} if title else None,
        margin={"l": 56, "r": 24, "t": 56 if title else 28, "b": 44}, hoverlabel={"font": {"family": MONO}},
        paper_bgcolor="#ffffff", plot_bgcolor="#ffffff",
    )
    if height:
        fig.update_layout(height=height)
    return fig


def empty_figure(message: str, *, title: str | None = None, height: int = 260) -> go.Figure:
    """A blank figure that says why it is blank (no run yet, no rollouts at this step, ...)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 14, "color": COLORS["neutral"]})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return base_layout(fig, title=title, height=height)
