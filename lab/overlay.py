"""Several runs side by side: overlaid curves, a summary table and the plain config diff.

Design choices:
- Input is one dict per run (`sdpg.runs.load_run`: name, method, seed, status, wall time,
  config, metrics rows, summary); the views only draw.
- Curves share the comparison figure's panels (`lab.compare.PANELS`) so both pages read alike; colour is
  the method's (`lab.style.METHOD_COLORS`), dash the seed, so "same method, other seed" is one colour.
- The config diff lists only the settings that differ between the chosen runs, one row per setting:
  the thing a person needs to know before reading two curves as a comparison.
"""
from __future__ import annotations

import html
import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from lab.compare import PANELS
from lab.style import COLORS, METHOD_COLORS, base_layout, empty_figure

SEED_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SUMMARY_COLUMNS = [("final_pass@1", "final pass@1", ".3f"), ("best_pass@1", "best pass@1", ".3f"),
                   ("teacher_pass@1", "teacher pass@1", ".3f"), ("entropy", "entropy (late)", ".3f"),
                   ("response_length", "length (late)", ".1f")]


def run_style(run: dict, seeds: list) -> tuple[str, str]:
    """(colour, dash): the method's colour, a dash per distinct seed among the runs shown."""
    dash = SEED_DASHES[seeds.index(run.get("seed")) % len(SEED_DASHES)] if run.get("seed") in seeds else "solid"
    return METHOD_COLORS.get(run.get("method"), COLORS["neutral"]), dash


def overlay_figure(runs: list[dict]) -> go.Figure:
    """Six panels (held-out and teacher pass@1, reward, entropy, KL, length), one line per run."""
    if not runs:
        return empty_figure("choose two or more runs to compare", title="Run comparison")
    seeds = sorted({r.get("seed") for r in runs}, key=str)
    fig = make_subplots(rows=2, cols=3, subplot_titles=[p[2] for p in PANELS], horizontal_spacing=0.07,
                        vertical_spacing=0.14)
    for run in runs:
        color, dash = run_style(run, seeds)
        for j, (table, key, _) in enumerate(PANELS):
            rows = [m for m in run["metrics"] if _number(m.get(key)) and (table == "evals" or "reward/mean" in m)]
            fig.add_trace(go.Scatter(x=[m["step"] for m in rows], y=[m[key] for m in rows], name=run["name"],
                                     legendgroup=run["name"], showlegend=j == 0,
                                     mode="lines+markers" if table == "evals" else "lines",
                                     line={"color": color, "dash": dash, "width": 2}),
                          row=j // 3 + 1, col=j % 3 + 1)
    fig.update_xaxes(title="step", row=2)
    return base_layout(fig, title="Runs overlaid — colour: method, dash: seed", height=640)


def summary_table_html(runs: list[dict]) -> str:
    """One row per run: status, final / best held-out pass@1, teacher pass@1, late entropy and length, wall time."""
    if not runs:
        return ""
    seeds = sorted({r.get("seed") for r in runs}, key=str)
    head = "<tr><th>run</th><th>method</th><th>seed</th><th>status</th>" + "".join(
        f"<th>{label}</th>" for _, label, _ in SUMMARY_COLUMNS) + "<th>wall time</th></tr>"
    rows = []
    for run in runs:
        color, _ = run_style(run, seeds)
        cells = "".join(f"<td>{_fmt(run['summary'].get(key), spec)}</td>" for key, _, spec in SUMMARY_COLUMNS)
        rows.append(f"<tr><td><span style='color:{color}'>■</span> {html.escape(run['name'])}</td>"
                    f"<td>{html.escape(str(run['method']))}</td><td>{run.get('seed')}</td><td>{run['status']}</td>"
                    f"{cells}<td>{_duration(run.get('wall_s'))}</td></tr>")
    return _table(head, rows, "“late” = mean over the last quarter of training steps; pass@1 from the held-out "
                              "evaluations (final = at the last planned step).")


def config_diff(configs: list[dict]) -> dict[str, list]:
    """Setting ("section.field") -> its value in each config, for the settings that are not all equal."""
    flat = [_flatten(c) for c in configs]
    keys = sorted(set().union(*flat)) if flat else []
    return {k: [f.get(k, "—") for f in flat] for k in keys if len({repr(f.get(k, "—")) for f in flat}) > 1}


def config_diff_html(runs: list[dict]) -> str:
    """The settings that differ between the runs, one row each (run directories are left out)."""
    if len(runs) < 2:
        return ""
    diff = {k: v for k, v in config_diff([r["config"] for r in runs]).items() if k != "run.run_dir"}
    if not diff:
        return "<p><b>Config diff:</b> the runs have identical settings (apart from their directories).</p>"
    head = "<tr><th>setting</th>" + "".join(f"<th>{html.escape(r['name'])}</th>" for r in runs) + "</tr>"
    rows = ["<tr><td><code>" + html.escape(k) + "</code></td>" + "".join(
        f"<td>{html.escape(str(v))}</td>" for v in values) + "</tr>" for k, values in diff.items()]
    return _table(head, rows, f"{len(diff)} settings differ; every other setting is the same in all runs.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def _number(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _fmt(x, spec: str) -> str:
    return format(x, spec) if _number(x) else "—"


def _duration(seconds) -> str:
    if not _number(seconds):
        return "—"
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _table(head: str, rows: list[str], note: str) -> str:
    style = ("<style>.sdpg-cmp td,.sdpg-cmp th{padding:4px 10px;border-bottom:1px solid #e9ecef;text-align:left}"
             ".sdpg-cmp th{background:#f8f9fa}</style>")
    return (f"{style}<table class='sdpg-cmp' style='border-collapse:collapse;font-size:13px'>{head}{''.join(rows)}"
            f"</table><p style='color:#495057;font-size:12px'>{note}</p>")
