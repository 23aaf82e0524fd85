"""One self-contained HTML file of a run: `python -m lab.export RUN [--step N] [--out FILE]`.

Design choices:
- One file that opens anywhere without a network: plotly.js is inlined once (about 4.7 MB), every later figure
  refers to it; styles are inline. Everything recorded is escaped (model outputs are data, never markup).
- It holds what a person hands out after a lesson: the run's curves, the chosen step's per-token KL heatmap,
  rollout inspector (with the first response's top-k at its largest-KL token) and what-if weights, and the config.
- The step defaults to the newest step with rollout records; a step without records is refused, naming those
  that have them. The same function serves the page's Export button and the command line.
"""
from __future__ import annotations

import argparse
import html
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lab.curves import curves_figure
from lab.heatmap import token_heatmap
from lab.inspector import rollout_html, topk_figure
from lab.style import MONO
from lab.viewmodel import pick_group
from lab.whatif import whatif_figure
from sdpg.records import RecordStream
from sdpg.whatif import token_weights

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title></head>
<body style="font-family:Inter,'Segoe UI',Arial,sans-serif;max-width:1400px;margin:20px auto;padding:0 16px;color:#212529">
<h1 style="margin-bottom:2px">{title}</h1>
<div style="color:#868e96">{subtitle}</div>
{sections}
</body></html>
"""


def export_step(stream: RecordStream, step: int | None) -> int:
    """`step`, or the newest step with rollout records; ValueError when there is none or `step` has none."""
    steps = stream.rollout_steps()
    if not steps:
        raise ValueError(f"{stream.run_dir} has no rollout records to export")
    if step is None:
        return steps[-1]
    if step not in steps:
        raise ValueError(f"step {step} of {stream.run_dir} has no rollout records; steps with records: {steps}")
    return step


def export_html(stream: RecordStream, step: int | None = None, group: int | None = None) -> str:
    """The run of `stream` as one HTML page: curves, then step `step`'s group `group` (default: the first)."""
    step = export_step(stream, step)
    config, g = stream.config(), pick_group(stream, step, group)
    response = g["responses"][0] if g["responses"] else {}
    kl = np.asarray(response.get("kl", []), dtype=float)
    position = int(kl.argmax()) if kl.size else 0
    try:
        weights = token_weights(response, config)
    except KeyError:  # records without the arrays the weights need
        weights = None
    figures = [
        ("Training curves", curves_figure(stream.metrics(), config)),
        ("Per-token KL(student ‖ teacher)", token_heatmap(g, "kl")),
        (f"Top-5 next tokens of response #0 at position {position} (its largest KL)", topk_figure(g, 0, position)),
        ("What-if token weights of response #0", whatif_figure(weights, list(response.get("tokens", [])),
                                                                label=f"step {step}, group {g['group']}, response #0")),
    ]
    sections = [_figure_section(title, fig, first=i == 0) for i, (title, fig) in enumerate(figures)]
    sections.insert(2, f"<h2>Rollout inspector — step {step}, group {g['group']}</h2>{rollout_html(g)}")
    sections.append(f"<h2>Config</h2><pre style='font-family:{MONO};font-size:12px;background:#f8f9fa;padding:12px;"
                    f"border-radius:8px;overflow:auto'>{html.escape(json.dumps(config, indent=2))}</pre>")
    name = stream.run_dir.name if stream.run_dir else "run"
    method = (config.get("loss") or {}).get("method", "?").upper()
    subtitle = (f"{method} · {len(stream.metrics())} metrics rows · step {step} shown · exported "
                f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {html.escape(str(stream.run_dir))}")
    return PAGE.format(title=html.escape(f"SDPG Lab — {name}"), subtitle=subtitle, sections="\n".join(sections))


def _figure_section(title: str, fig, *, first: bool) -> str:
    plot = fig.to_html(full_html=False, include_plotlyjs=True if first else False, config={"displaylogo": False})
    return f"<h2>{html.escape(title)}</h2><div class='sdpg-export-figure'>{plot}</div>"


def export_run(run_dir: str | Path, step: int | None = None, out: str | Path | None = None) -> Path:
    """Write the export of `run_dir` (default: `<run_dir>/export-step<N>.html`); returns its path."""
    stream = RecordStream.open(run_dir)
    step = export_step(stream, step)
    path = Path(out) if out else Path(run_dir) / f"export-step{step}.html"
    path.write_text(export_html(stream, step), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lab.export", description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory")
    parser.add_argument("--step", type=int, help="the step whose heatmap, inspector and what-if to show "
                                                 "(default: the newest with rollout records)")
    parser.add_argument("--out", help="the HTML file to write (default: <run>/export-step<N>.html)")
    args = parser.parse_args(argv)
    try:
        path = export_run(args.run, args.step, args.out)
    except (OSError, ValueError) as err:
        sys.exit(f"export: {err}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
