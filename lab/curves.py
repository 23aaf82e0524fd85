"""Training curves as small multiples, read straight from metrics rows.

Design choices:
- A panel is a title plus the metric keys it draws; the panel list is data (`PANELS`), so adding a
  curve is one line and the figure code never names a metric. Series are named by the metric registry's labels
  (`sdpg.metrics.Metric.label`), not here.
- Rows may lack any key (evaluation runs every N steps, some keys only for some methods): each series
  keeps only the rows where its value is a finite number, and eval series get markers so sparse
  points stay visible.
- `eval/pass@k` is written with the actual k by the trainer (`eval/pass@4`); a key ending in `@k`
  matches whichever `pass@<number>` other than `pass@1` the rows carry.
- Each panel title carries the latest value of its first series; a constant series gets a y range
  scaled to its value, so a flat learning rate of 1e-4 does not read as 0.
- A client is sent at most `MAX_POINTS` steps per curve (`thin_rows`: evenly spaced rows, every evaluation row
  thinned the same way, and always the last row), so a run of millions of steps costs a refresh what a run of
  thousands does; the planned beta is sampled the same way plus the schedule's corners.
- The effective beta is drawn over the planned schedule for the whole run (from the engine's own
  `beta_schedule`), so the plan is visible ahead of the measured curve; methods the registry marks as
  not distilling get no plan.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.style import COLORS, base_layout
from sdpg.losses import beta_schedule
from sdpg.methods import METHODS
from sdpg.metrics import label


MAX_POINTS = 2000
"""most steps one curve sends to the browser"""


def thin_rows(rows: list[dict], budget: int = MAX_POINTS) -> list[dict]:
    """At most about `budget` evenly spaced rows (and as many evaluation rows), always with the last one."""
    def picks(idx: list[int]) -> set[int]:
        stride = math.ceil(len(idx) / budget) if idx else 1
        return set(idx[::stride]) | set(idx[-1:])
    if len(rows) <= budget:
        return rows
    keep = picks(list(range(len(rows)))) | picks([i for i, r in enumerate(rows) if "eval/pass@1" in r])
    return [rows[i] for i in sorted(keep)]


@dataclass(frozen=True)
class Series:
    key: str
    """metric key (`eval/pass@k` matches the run's `eval/pass@<k>`)"""
    color: str
    """line colour"""
    dash: str = "solid"
    """plotly dash style"""

    @property
    def label(self) -> str:
        """legend / hover name: the metric registry's label of the key"""
        return label(self.key)


@dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    log_y: bool = False


PANELS: tuple[Panel, ...] = (
    Panel("Reward (mean)", (Series("reward/mean", COLORS["reward"]),)),
    Panel("Accuracy (train rollouts)", (Series("reward/accuracy", COLORS["accuracy"]),)),
    Panel("Held-out pass@1", (Series("eval/pass@1", COLORS["student"]),
                              Series("eval/pass@k", COLORS["student"], "dot"),
                              Series("eval/teacher_pass@1", COLORS["teacher"]))),
    Panel("KL(student ‖ teacher)", (Series("kl/distill_mean", COLORS["kl"]),
                                   Series("kl/distill_gated_mean", COLORS["kl"], "dot"))),
    Panel("Reference KL", (Series("kl/ref_mean", COLORS["ref"]),)),
    Panel("Entropy (student)", (Series("entropy/mean", COLORS["entropy"]),)),
    Panel("Response length (tokens)", (Series("response/length_mean", COLORS["length"]),)),
    Panel("Clip fractions", (Series("loss/clipfrac_high", COLORS["grad"]),
                             Series("loss/clipfrac_low", COLORS["pg"]))),
    Panel("Losses", (Series("loss/total", COLORS["loss"]), Series("loss/pg", COLORS["pg"]),
                     Series("loss/distill", COLORS["kl"]),
                     Series("loss/ref_kl", COLORS["ref"]))),
    Panel("Grad norm", (Series("grad/norm", COLORS["grad"]),
                        Series("grad/norm_max", COLORS["grad"], "dot"))),
    Panel("Sampler vs trainer log-prob gap", (Series("rollout/logp_gap_mean", COLORS["neutral"]),
                                              Series("rollout/logp_gap_max", COLORS["neutral"], "dot"))),
    Panel("β effective vs planned", (Series("beta/effective", COLORS["beta"]),)),
    Panel("Learning rate", (Series("optim/lr", COLORS["loss"]),)),
    Panel("Gate & zero-variance groups", (Series("gate/fraction", COLORS["gate"]),
                                          Series("adv/zero_var_groups", COLORS["zero_var"]))),
    Panel("Verifier: responses not scored ok", (Series("reward/no_answer", COLORS["grad"]),
                                                Series("reward/timeouts", COLORS["zero_var"]),
                                                Series("reward/errors", COLORS["loss"], "dot"))),
    Panel("Throughput (tokens/s)", (Series("perf/tokens_per_s", COLORS["perf"]),)),
    Panel("Time per step (s)", (Series("time/rollout", COLORS["student"]),
                                Series("time/reward", COLORS["reward"]),
                                Series("time/teacher", COLORS["teacher"]),
                                Series("time/reference", COLORS["ref"]),
                                Series("time/update", COLORS["loss"]),
                                Series("time/step", COLORS["neutral"], "dot"))),
)
BETA_PANEL = "β effective vs planned"


def resolve_key(metrics: list[dict], key: str) -> str:
    """Map `eval/pass@k` to the run's own `eval/pass@<k>` key (k > 1); other keys pass through."""
    if not key.endswith("@k"):
        return key
    pattern = re.compile(re.escape(key[:-1]) + r"(\d+)$")
    for row in metrics:
        for name in row:
            m = pattern.match(name)
            if m and m.group(1) != "1":
                return name
    return key


def series(metrics: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of one metric, keeping only rows where it is a finite number."""
    steps, values = [], []
    for row in metrics:
        v = row.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(row["step"])
            values.append(float(v))
    return steps, values


def planned_beta(config: dict) -> tuple[list[int], list[float]]:
    """The beta schedule the config asks for, at every recorded step 1..run.steps.

    The trainer records step s after training it with `beta_schedule(s)` (steps count from 1, as in verl),
    so the plan lines up with the measured `beta/effective`. Empty without a config,
    or for a registered method whose loss has no distillation term.
    """
    loss, run = config.get("loss"), config.get("run")
    method = METHODS.get((loss or {}).get("method"))
    if not loss or not run or (method is not None and not method.distills):
        return [], []
    if not isinstance(run.get("steps"), int) or any(not isinstance(loss.get(k), (int, float))
                                                    for k in ("beta", "beta_warmup", "beta_decay")):
        return [], []  # a damaged config (the replay says which field): no plan to draw
    total = run["steps"]
    corners = {1, loss["beta_warmup"], loss["beta_warmup"] + 1, total - loss["beta_decay"],
               total - loss["beta_decay"] + 1, total}
    steps = sorted({s for s in range(1, total + 1, math.ceil(total / MAX_POINTS))} | {s for s in corners if 1 <= s <= total})
    return steps, [float(beta_schedule(s, total, loss["beta"], loss["beta_warmup"], loss["beta_decay"]))
                   for s in steps]


def flat_range(value: float) -> list[float]:
    """A y range around a constant series that keeps its scale (plotly would centre 1e-4 in [-1, 1])."""
    pad = abs(value) * 0.5 or 1.0
    return [value - pad, value + pad]


def curves_figure(metrics: list[dict], config: dict | None = None, *, panels: tuple[Panel, ...] = PANELS,
                  cols: int = 4) -> go.Figure:
    """Small-multiple line charts of the metrics rows, one panel per entry of `panels`."""
    metrics = thin_rows(metrics)
    rows = math.ceil(len(panels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[p.title for p in panels],
                        horizontal_spacing=0.06, vertical_spacing=0.32 / rows)
    total = (config or {}).get("run", {}).get("steps")
    for i, panel in enumerate(panels):
        r, c = divmod(i, cols)
        multi = len(panel.series) > 1 or panel.title == BETA_PANEL
        drawn: list[float] = []
        if panel.title == BETA_PANEL and config:
            xs, ys = planned_beta(config)
            fig.add_trace(go.Scatter(x=xs, y=ys, name="β planned", mode="lines", legendgroup="β planned",
                                     line={"color": COLORS["planned"], "dash": "dash", "width": 2},
                                     hovertemplate="step %{x}<br>β planned %{y:.3g}<extra></extra>"),
                          row=r + 1, col=c + 1)
            drawn += ys
        latest = None
        for s in panel.series:
            key = resolve_key(metrics, s.key)
            xs, ys = series(metrics, key)
            sparse = key.startswith("eval/") or len(xs) < 3
            label = s.label.replace("pass@k", key.rsplit("/", 1)[-1]) if key != s.key else s.label
            fig.add_trace(go.Scatter(x=xs, y=ys, name=label, mode="lines+markers" if sparse else "lines",
                                     legendgroup=label, showlegend=multi,
                                     line={"color": s.color, "dash": s.dash, "width": 2}, marker={"size": 6},
                                     hovertemplate=f"step %{{x}}<br>{label} %{{y:.4g}}<extra></extra>"),
                          row=r + 1, col=c + 1)
            drawn += ys
            if latest is None and ys:
                latest = ys[-1]
        if latest is not None:
            fig.layout.annotations[i].text = f"{panel.title} · <b>{latest:.3g}</b>"
        axes = fig.get_subplot(r + 1, c + 1)  # the panel's own axes: update_xaxes(row=, col=) scans every axis
        if total:
            axes.xaxis.range = [0, total]
        if drawn and max(drawn) == min(drawn):
            axes.yaxis.range = flat_range(drawn[0])
        if panel.log_y:
            axes.yaxis.type = "log"
    fig.update_xaxes(showgrid=True, gridcolor="#eef0f3", zeroline=False, tickfont={"size": 10})
    fig.update_yaxes(showgrid=True, gridcolor="#eef0f3", zeroline=False, tickfont={"size": 10}, exponentformat="e")
    fig.update_annotations(font={"size": 12})
    if not metrics:
        fig.add_annotation(text="waiting for the first metrics row…", x=0.5, y=0.5, xref="paper", yref="paper",
                           showarrow=False, font={"size": 16, "color": COLORS["neutral"]}, bgcolor="#ffffff")
    base_layout(fig, height=230 * rows + 80)
    fig.update_layout(legend={"orientation": "h", "y": -0.04, "yanchor": "top", "x": 0, "font": {"size": 11}},
                      hovermode="closest", margin={"t": 40, "b": 70})
    return fig
