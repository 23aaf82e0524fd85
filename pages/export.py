"""The Export tab: the shown run (live or replay) at the shown step as one self-contained HTML file.

Design choices:
- The file is written by `lab.export` (the same as `python -m lab.export RUN --step N`) into a fresh temporary
  folder and offered as a download, so exporting never writes into a run directory.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from lab.export import export_html, export_step
from lab.status import message_html


def export_tab() -> SimpleNamespace:
    """The tab's components (built inside the caller's `gr.Tab`)."""
    ui = SimpleNamespace()
    gr.Markdown("Write the shown run as **one HTML file** that opens without a network (plotly inlined): its "
                "curves, the chosen step's per-token KL heatmap, rollout inspector and what-if weights, and the "
                "config. The same as `python -m lab.export RUN --step N`.")
    ui.button = gr.Button("⤓ Export this run and step", variant="primary", elem_id="sdpg-export")
    ui.message = gr.HTML(elem_id="sdpg-export-message")
    ui.file = gr.File(label="Exported file", interactive=False, elem_id="sdpg-export-file")
    return ui


def wire_export(ctl, ui: SimpleNamespace, step, group) -> None:
    """The button exports `ctl`'s shown run at the page's `step` and `group`."""
    def export(step_value, group_value):
        stream = ctl.stream()
        if stream is None:
            return message_html("No run to export: start one or open one in the Replay tab.", "error"), None
        try:
            chosen = export_step(stream, step_value if isinstance(step_value, int) else None)
            page = export_html(stream, chosen, group_value)
        except ValueError as err:
            return message_html(f"Not exported: {err}", "error"), None
        name = stream.run_dir.name if stream.run_dir else "run"
        path = Path(tempfile.mkdtemp(prefix="sdpg-export-")) / f"{name}-step{chosen}.html"
        path.write_text(page, encoding="utf-8")
        return message_html(f"Exported step {chosen} of {name} ({path.stat().st_size / 1e6:.1f} MB).", "ok"), str(path)

    ui.button.click(export, [step, group], [ui.message, ui.file], api_name="export")
