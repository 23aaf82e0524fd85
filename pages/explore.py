"""The Across steps tab (a rollout table, and one prompt across steps): the shown run's recorded groups, searched or followed.

Design choices:
- Both read the run the page shows (live or replay) through `RecordStream.group_index()` when asked (a filter
  changes, ↻ is pressed, or a prompt is picked), never on the timer: a long run is not rescanned every tick.
- The filters are the table's only state; `lab.explore.filter_rows` applies them.
"""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from lab.explore import (ANY, GATES, SIGNS, filter_rows, parse_bound, prompt_across_steps_figure, prompt_choices, prompt_groups,
                         prompt_steps_html, rollout_table_html, statuses, table_rows)


def explore_tabs(ctl) -> SimpleNamespace:
    """The two views as tabs of their own (built inside the caller's `gr.Tab`); `ctl` is the page's controller."""
    ui = SimpleNamespace()
    with gr.Tabs():
        with gr.Tab("Rollout table"):
            gr.Markdown("Every recorded response of the shown run (live or replay) across steps. Search the text, "
                        "prompt or answer; filter by reward, advantage sign, gate and verifier status.")
            with gr.Row():
                ui.text = gr.Textbox(label="Search text", placeholder="e.g. boxed", scale=3,
                                     elem_id="sdpg-table-search")
                ui.min_reward = gr.Textbox(label="Reward ≥", placeholder="any", min_width=90,
                                           elem_id="sdpg-table-reward-min")
                ui.max_reward = gr.Textbox(label="Reward ≤", placeholder="any", min_width=90,
                                           elem_id="sdpg-table-reward-max")
                ui.advantage = gr.Dropdown(list(SIGNS), value=ANY, label="Advantage", min_width=110,
                                           elem_id="sdpg-table-adv")
                ui.gate = gr.Dropdown(list(GATES), value=ANY, label="Gate", min_width=90, elem_id="sdpg-table-gate")
                ui.status = gr.Dropdown([ANY], value=ANY, label="Status", allow_custom_value=True, min_width=110,
                                        elem_id="sdpg-table-status")
                ui.refresh = gr.Button("↻", size="sm", scale=0, min_width=50, elem_id="sdpg-table-refresh")
            ui.table = gr.HTML(elem_id="sdpg-table")
        with gr.Tab("Prompt across steps"):
            gr.Markdown("Every recorded group of one prompt in step order: its answers and the teacher's "
                        "disagreement (mean and largest per-token KL per response) as training goes on.")
            with gr.Row():
                ui.prompt = gr.Dropdown([], label="Prompt", scale=5, elem_id="sdpg-prompt-pick")
                ui.prompt_refresh = gr.Button("↻ Refresh list", size="sm", scale=0, min_width=120,
                                              elem_id="sdpg-prompt-refresh")
            ui.prompt_fig = gr.Plot(show_label=False, elem_id="sdpg-prompt-fig")
            ui.prompt_steps = gr.HTML(elem_id="sdpg-prompt-steps")
    return ui


def wire_explore(ctl, ui: SimpleNamespace) -> None:
    """Filters redraw the table; ↻ re-reads the records; picking a prompt draws its steps."""
    def index() -> list[dict]:
        stream = ctl.stream()
        return stream.group_index() if stream is not None else []

    def table(text, min_reward, max_reward, advantage, gate, status):
        rows = table_rows(index())
        try:
            matched = filter_rows(rows, text=text, min_reward=parse_bound(min_reward, "Reward ≥"),
                                  max_reward=parse_bound(max_reward, "Reward ≤"), advantage=advantage, gate=gate,
                                  status=status)
        except ValueError as err:
            return gr.skip(), f"<div style='color:#c92a2a'>{err}</div>"
        choices = statuses(rows)
        return gr.update(choices=choices, value=status if status in choices else ANY), rollout_table_html(matched, len(rows))

    def prompts():
        choices = prompt_choices(index())
        return gr.update(choices=choices, value=choices[0][1] if choices else None)

    def prompt_view(prompt):
        groups = prompt_groups(index(), prompt) if prompt else []
        return prompt_across_steps_figure(groups), prompt_steps_html(groups)

    filters = [ui.text, ui.min_reward, ui.max_reward, ui.advantage, ui.gate, ui.status]
    for control in filters:  # typed boxes: `change`, since `input` may send the value from before the keystroke
        event = control.change if control in (ui.text, ui.min_reward, ui.max_reward) else control.input
        event(table, filters, [ui.status, ui.table], show_progress="hidden", api_visibility="private")
    ui.refresh.click(table, filters, [ui.status, ui.table], api_name="rollout_table")
    ui.prompt_refresh.click(prompts, None, ui.prompt, api_visibility="private").then(
        prompt_view, ui.prompt, [ui.prompt_fig, ui.prompt_steps], api_visibility="private")
    ui.prompt.input(prompt_view, ui.prompt, [ui.prompt_fig, ui.prompt_steps], api_name="prompt_across_steps")
