"""The Race tab: one click trains two runs that differ only in the method, drawn side by side.

Design choices:
- `RaceController` holds the live race (or a recorded one being replayed) at app level, like the page's
  `Controller` holds its run: a reload or a second tab sees the same race.
- The race takes every setting from the run settings on the left and changes only the method; it refuses to
  start while the page's single run or another race is active (2 cores cannot carry three trainings).
- Its own timer redraws only when either run's records changed.
- The page's top status card speaks of the race while the race is the page's latest training (started after the
  single run it had then) and no replay is open: the race's card instead of the single run's. Otherwise the race's
  card is added under it while either run's thread lives, so a race never goes unmentioned.
"""
from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import gradio as gr

from lab.heatmap import COLOR_MODES
from lab.race import RaceView, race_card, race_curves, race_heatmaps, race_inspectors, race_status_html
from lab.status import message_html
from lab.style import empty_figure
from lab.viewmodel import follow_step, group_ids
from sdpg.config import TrainConfig
from sdpg.methods import METHODS
from sdpg.race import DEFAULT_METHODS, RACE_FILE, Race, fresh_race_dir

REFRESH_S = 1.5


class RaceController:
    """The page's race: at most one live race, or a recorded one shown instead."""

    def __init__(self, ctl):
        self.ctl = ctl
        """the page's `Controller`: its runs root, allowed roots, run factory and live run"""
        self.race: Race | None = None
        self.view: RaceView | None = None
        self.run_before = None
        """the page's single run handle when the race started: the race is the latest training while it still is"""
        self._lock = threading.Lock()

    def start(self, cfg: TrainConfig, method_a: str, method_b: str) -> tuple[str, str]:
        with self._lock:
            if self.race is not None and self.race.active:
                return "A race is already running; stop it before starting another.", "error"
            if self.ctl.handle is not None and self.ctl.live_status() in ("created", "loading", "running", "paused"):
                return "The single run on the left is still active; stop it before starting a race.", "error"
            methods = (method_a, method_b)
            race = Race(cfg, fresh_race_dir(self.ctl.runs_root, methods), methods, run_factory=self.ctl.run_factory)
            self.race, self.view, self.run_before = race.start(), RaceView.of(race), self.ctl.handle
        return f"Race started: {method_a.upper()} vs {method_b.upper()} for {cfg.run.steps} steps → {race.race_dir}", "ok"

    def act(self, action: str) -> tuple[str, str]:
        if self.race is None or not self.race.active:
            return f"No live race to {action}.", "error"
        if action == "stop":
            self.race.stop(wait=False)
            return "Stop requested for both runs: each saves a checkpoint after its current step.", "info"
        getattr(self.race, action)()
        return f"{action.capitalize()} requested for both runs.", "info"

    def open(self, race_dir: str) -> tuple[str, str]:
        text = (race_dir or "").strip()
        if not text:
            return "Choose or type a race directory first.", "error"
        try:
            path = confined(text, self.ctl.allowed_roots)
            self.view = RaceView.of(path)
        except (OSError, ValueError) as err:
            return str(err), "error"
        return f"Opened race {text} for browsing.", "ok"

    def show_live(self) -> tuple[str, str]:
        if self.race is None:
            return "No live race; start one or open a recorded one.", "error"
        self.view = RaceView.of(self.race)
        return "Showing the live race.", "ok"

    def version(self) -> tuple:
        return ("none",) if self.view is None else self.view.version()

    def top_card(self, card: str) -> str:
        """The page's status card `card` (the single run's or the replay's) with the live race in it."""
        if self.race is None:
            return card
        if self.ctl.handle is self.run_before and self.ctl.replay is None:
            return race_card(self.race)
        return card + race_card(self.race) if self.race.alive else card

    def top_version(self) -> tuple:
        """What the race adds to the page's version: each run's status and step."""
        return () if self.race is None else tuple((h.status, h.step) for h in self.race.handles)


def confined(text: str, roots: list[Path]) -> Path:
    """`text` as a path under one of `roots`; ValueError otherwise (checked before the path is touched)."""
    path = Path(text).expanduser().resolve()
    if not any(path == root or root in path.parents for root in roots):
        raise ValueError(f"race directory {text!r} is outside the runs root and the allowed folders")
    return path


def list_races(runs_root: str | Path) -> list[str]:
    """Race directories under the runs root, newest first."""
    root = Path(runs_root)
    races = [p for p in root.iterdir() if (p / RACE_FILE).is_file()] if root.is_dir() else []
    return [str(p) for p in sorted(races, key=lambda p: p.stat().st_mtime, reverse=True)]


def race_tab(rc: RaceController) -> SimpleNamespace:
    """The components of the Race tab (built inside the caller's `gr.Tab`)."""
    ui = SimpleNamespace()
    gr.Markdown("Train two runs that differ **only in the method** — same task, seed, learning rate and prompt "
                "order, every other setting from the left — at the same time, and watch them side by side. Both "
                "share the CPU, so each runs about half as fast as alone on 2 cores.")
    with gr.Row():
        ui.method_a = gr.Dropdown(list(METHODS), value=DEFAULT_METHODS[0], label="Method A", elem_id="sdpg-race-a")
        ui.method_b = gr.Dropdown(list(METHODS), value=DEFAULT_METHODS[1], label="Method B", elem_id="sdpg-race-b")
        ui.start = gr.Button("Start race ▶▶", variant="primary", elem_id="sdpg-race-start")
    with gr.Row():
        ui.pause = gr.Button("❚❚ Pause both", size="sm", elem_id="sdpg-race-pause")
        ui.resume = gr.Button("▶ Resume both", size="sm", elem_id="sdpg-race-resume")
        ui.stop = gr.Button("■ Stop both", variant="stop", size="sm", elem_id="sdpg-race-stop")
    with gr.Row():
        ui.pick = gr.Dropdown(list_races(rc.ctl.runs_root), label="Recorded race", allow_custom_value=True, scale=4,
                              elem_id="sdpg-race-pick")
        ui.open = gr.Button("Open race", size="sm", scale=0, min_width=110, elem_id="sdpg-race-open")
        ui.live = gr.Button("Show live race", size="sm", scale=0, min_width=110, elem_id="sdpg-race-live")
    ui.message = gr.HTML(elem_id="sdpg-race-message")
    ui.status = gr.HTML(elem_id="sdpg-race-status")
    ui.curves = gr.Plot(show_label=False, elem_id="sdpg-race-curves")
    with gr.Row(equal_height=True):
        ui.step = gr.Dropdown([], label="Step (both runs)", elem_id="sdpg-race-step")
        ui.group = gr.Dropdown([], label="Group", elem_id="sdpg-race-group")
        ui.follow = gr.Checkbox(True, label="Follow latest step", elem_id="sdpg-race-follow")
        ui.color_by = gr.Radio([(label, key) for key, label in COLOR_MODES.items()], value="kl",
                               label="Colour cells by", elem_id="sdpg-race-color")
    with gr.Row():
        ui.heat_a = gr.Plot(show_label=False, elem_id="sdpg-race-heat-a")
        ui.heat_b = gr.Plot(show_label=False, elem_id="sdpg-race-heat-b")
    with gr.Row():
        ui.insp_a = gr.HTML(elem_id="sdpg-race-insp-a")
        ui.insp_b = gr.HTML(elem_id="sdpg-race-insp-b")
    return ui


def race_selection(view: RaceView | None, step, group, color) -> list:
    """Group choices, both heatmaps and both inspectors for one step and group."""
    if view is None:
        return [gr.update(choices=[], value=None), *[empty_figure("no race yet", title="Per-token KL(student ‖ teacher)")] * 2, "", ""]
    ids = group_ids(view.streams()[0], step)
    group = group if group in ids else (ids[0] if ids else None)
    return [gr.update(choices=ids, value=group), *race_heatmaps(view, step, group, color),
            *race_inspectors(view, step, group)]


def wire_race(rc: RaceController, ui: SimpleNamespace, settings: list, make_config: Callable[..., TrainConfig]) -> None:
    """Buttons, replay, the refresh timer and the selection of the Race tab; `make_config(*settings values)`
    builds the validated config from the run settings (ValueError/OSError name the bad one)."""
    seen = gr.State(None)
    selection = [ui.group, ui.heat_a, ui.heat_b, ui.insp_a, ui.insp_b]

    def on_start(a, b, *values):
        try:
            return message_html(*rc.start(make_config(*values), a, b))
        except (ValueError, OSError) as err:
            return message_html(f"Race not started: {err}", "error")

    def tick(last, step, group, follow_on, color):
        version = rc.version()
        if version == last:
            return [gr.skip()] * (4 + len(selection))
        view = rc.view
        if view is None:
            return [version, "", empty_figure("start a race or open a recorded one", title="Runs overlaid"), gr.update(choices=[], value=None), *race_selection(None, None, None, color)]
        choices = view.common_steps()
        step = follow_step(choices, step, follow_on)
        return [version, race_status_html(view), race_curves(view), gr.update(choices=choices, value=step),
                *race_selection(view, step, group, color)]

    def on_select(step, group, color):
        return [False, *race_selection(rc.view, step, group, color)]

    def on_follow(follow_on, step, group, color):
        if not follow_on or rc.view is None:
            return [gr.skip()] * (1 + len(selection))
        step = follow_step(rc.view.common_steps(), step, True)
        return [gr.update(value=step), *race_selection(rc.view, step, group, color)]

    ui.start.click(on_start, [ui.method_a, ui.method_b, *settings], ui.message, api_name="race_start")
    for action in ("pause", "resume", "stop"):
        getattr(ui, action).click(lambda a=action: message_html(*rc.act(a)), None, ui.message, api_name=f"race_{action}")
    ui.open.click(lambda d: message_html(*rc.open(d)), ui.pick, ui.message, api_name="race_open")
    ui.live.click(lambda: message_html(*rc.show_live()), None, ui.message, api_visibility="private")
    ui.pick.focus(lambda: gr.update(choices=list_races(rc.ctl.runs_root)), None, ui.pick, api_visibility="private")
    tick_inputs = [seen, ui.step, ui.group, ui.follow, ui.color_by]
    tick_outputs = [seen, ui.status, ui.curves, ui.step, *selection]
    gr.Timer(REFRESH_S).tick(tick, tick_inputs, tick_outputs, show_progress="hidden", concurrency_limit=None,
                             api_name="race_refresh")
    ui.follow.input(on_follow, [ui.follow, ui.step, ui.group, ui.color_by], [ui.step, *selection],
                    show_progress="hidden")
    for control in (ui.step, ui.group, ui.color_by):
        control.input(on_select, [ui.step, ui.group, ui.color_by], [ui.follow, *selection], show_progress="hidden")
