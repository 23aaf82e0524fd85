"""A live notebook view of a run: curves, the per-token KL heatmap and the advantage histogram.

Design choices:
- `LiveView` takes a run handle (anything with `.records`) or a `RecordStream` and is a thin adapter over
  `lab.viewmodel.RunView`, the page's view-model: the same version, status card, browsable steps and picked
  group, drawn with the same view functions into plotly `FigureWidget`s, so a notebook and the page agree.
- `update()` redraws only when the view-model's version changed, and returns whether it did; `start()` calls
  it from a daemon thread every `interval` seconds, so the kernel stays free for other cells while training
  runs in its own thread. `stop()` ends the refresher.
- The step / group / colour controls redraw the heatmap and histogram at once; "follow latest" keeps
  them on the newest step as records arrive.
- Health events of the run show as a banner under the status line, as on the page.
- `RaceLiveView` shows a race (`sdpg.race.Race`, or a race directory) as two `LiveView`s kept on the same
  step, under both runs' curves overlaid, with pause / resume / stop buttons acting on both runs.
- A replaced figure keeps its widget: traces and layout are swapped inside one `batch_update`, so the
  notebook output does not flicker or grow.
- Long responses: as on the page, the heatmap shows a window of `lab.heatmap.WINDOW` tokens; a slider and ◀ ▶
  move it, and a click on the overview strip (the whole response, max per bin) centres it there (`jump`).
"""
from __future__ import annotations

import threading

import ipywidgets as widgets
import plotly.graph_objects as go

from lab.advantages import advantage_histogram
from lab.curves import curves_figure
from lab.heatmap import (COLOR_MODES, WINDOW, overview_figure, response_length, token_heatmap, window_around,
                         window_start)
from lab.race import RaceView, race_curves
from lab.viewmodel import RunView, browsable_steps, follow_step, group_ids, metrics_row, pick_group
from sdpg.race import Race
from sdpg.records import RecordStream
from sdpg.run import TERMINAL


def replace_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Swap a FigureWidget's traces and layout for `fig`'s in one frontend update."""
    with widget.batch_update():
        widget.data = []
        widget.add_traces(list(fig.data))
        widget.layout = fig.layout


class LiveView:
    """Curves, KL heatmap and advantage histogram of a run or record stream, refreshed in the background."""

    def __init__(self, run_or_stream, *, interval: float = 2.0, color_by: str = "kl"):
        self.view = RunView.of(run_or_stream)
        self.interval = interval
        self.status = widgets.HTML()
        self.curves, self.heatmap, self.histogram = go.FigureWidget(), go.FigureWidget(), go.FigureWidget()
        self.overview = go.FigureWidget()
        self.window = widgets.IntSlider(value=0, min=0, max=0, description="first token", continuous_update=False,
                                        layout={"width": "420px"})
        self.back, self.forward = (widgets.Button(description=d, layout={"width": "48px"}) for d in ("◀", "▶"))
        self.back.on_click(lambda _: self.move(-WINDOW))
        self.forward.on_click(lambda _: self.move(WINDOW))
        self.step = widgets.Dropdown(description="step", options=[], layout={"width": "180px"})
        self.group = widgets.Dropdown(description="group", options=[], layout={"width": "160px"})
        self.follow = widgets.Checkbox(value=True, description="follow latest step", indent=False)
        self.color = widgets.ToggleButtons(options=[(label.split("  ")[0], key) for key, label in COLOR_MODES.items()],
                                           value=color_by, style={"button_width": "auto"})
        controls = widgets.HBox([self.step, self.group, self.follow], layout={"align_items": "center"})
        window = widgets.HBox([self.back, self.window, self.forward], layout={"align_items": "center"})
        self.widget = widgets.VBox([self.status, self.curves, controls, self.color, self.overview, window, self.heatmap,
                                    self.histogram])
        self._version = None
        self._syncing = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for control in (self.step, self.group, self.color, self.window):
            control.observe(self._on_select, names="value")
        self.update()

    @property
    def records(self) -> RecordStream:
        return self.view.stream()

    def update(self) -> bool:
        """Redraw from the records if anything changed since the last draw; True when it redrew."""
        with self._lock:
            version = self.view.version()
            if version == self._version:
                return False
            self._version = version
            stream = self.records
            self.status.value = self.view.status_card()
            replace_figure(self.curves, curves_figure(stream.metrics(), stream.config()))
            steps = browsable_steps(stream)
            step = follow_step(steps, self.step.value, self.follow.value)
            self._syncing = True
            try:
                self.step.options = steps
                if step is not None:
                    self.step.value = step
            finally:
                self._syncing = False
            self._draw_selection()
            return True

    def _on_select(self, change) -> None:
        if self._syncing:
            return
        if change["owner"] is self.step:
            self.follow.value = False
        with self._lock:
            self._draw_selection()

    def _draw_selection(self) -> None:
        stream, step = self.records, self.step.value
        group = pick_group(stream, step, self.group.value)
        self._syncing = True
        try:
            self.group.options = group_ids(stream, step)
            if group is not None:
                self.group.value = group["group"]
        finally:
            self._syncing = False
        n = response_length(group)
        self._syncing = True
        try:
            self.window.max = max(0, n - WINDOW)
            self.window.value = window_start(n, self.window.value)
        finally:
            self._syncing = False
        start = self.window.value
        replace_figure(self.heatmap, token_heatmap(group, self.color.value, start=start))
        replace_figure(self.overview, overview_figure(group, self.color.value, start=start))
        if self.overview.data:
            self.overview.data[0].on_click(lambda _trace, points, _state: points.xs and self.jump(points.xs[0]))
        replace_figure(self.histogram, advantage_histogram(metrics_row(stream, step)))

    # ---- the token window ----
    def jump(self, position: float) -> None:
        """Centre the heatmap's token window on `position` (a click on the overview calls this)."""
        group = pick_group(self.records, self.step.value, self.group.value)
        self.window.value = window_around(response_length(group), int(round(position)))

    def move(self, delta: int) -> None:
        """Shift the token window by `delta` tokens."""
        self.window.value = max(self.window.min, min(self.window.max, self.window.value + delta))

    # ---- background refresh ----
    def start(self, interval: float | None = None) -> "LiveView":
        """Refresh every `interval` seconds from a daemon thread until `stop()`, or until a run has ended and been drawn."""
        if interval is not None:
            self.interval = interval
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="sdpg-liveview", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.join(timeout=2 * self.interval + 1)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the background refresher to end (after `stop()`, or once a finished run is drawn)."""
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def refreshing(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            # read the state before drawing, so the draw that ends the loop includes the final records
            done = self.view.live_status() in TERMINAL
            self.update()
            if done:
                return

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class RaceLiveView:
    """A race in a notebook: both runs' curves overlaid, then each run's `LiveView` side by side on the same step,
    with buttons that pause, resume and stop both runs of a live race."""

    def __init__(self, race_or_dir, *, interval: float = 2.0):
        self.race = race_or_dir if isinstance(race_or_dir, Race) else None
        self.view = RaceView.of(race_or_dir)
        self.interval = interval
        sources = self.race.handles if self.race is not None else [v.replay for v in self.view.views]
        self.sides = [LiveView(source, interval=interval) for source in sources]
        self.curves = go.FigureWidget()
        buttons = []
        if self.race is not None:
            for label, action in (("pause both", self.race.pause), ("resume both", self.race.resume),
                                  ("stop both", lambda: self.race.stop(wait=False))):
                button = widgets.Button(description=label)
                button.on_click(lambda _, act=action: act())
                buttons.append(button)
        columns = [widgets.VBox([widgets.HTML(f"<h3>{m.upper()}</h3>"), side.widget], layout={"width": "50%"})
                   for m, side in zip(self.view.methods, self.sides)]
        self.buttons = buttons
        self.widget = widgets.VBox([widgets.HBox(buttons), self.curves, widgets.HBox(columns)])
        self.sides[0].step.observe(self._same_step, names="value")
        self._version = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.update()

    def update(self) -> bool:
        """Redraw what changed in either run; True when anything was redrawn."""
        drawn = [side.update() for side in self.sides]
        version = self.view.version()
        if version != self._version:
            self._version = version
            replace_figure(self.curves, race_curves(self.view))
        self._same_step({"new": self.sides[0].step.value})
        return any(drawn)

    def _same_step(self, change) -> None:
        """Show one step on both sides: the left's when both have it, else the newest both have."""
        common = self.view.common_steps()
        step = change["new"] if change["new"] in common else (common[-1] if common else None)
        for side in self.sides:
            if step is not None and side.step.value != step and step in side.step.options:
                following = side.follow.value
                side.step.value = step  # its observer turns following off: a step chosen here is not a user's pick
                side.follow.value = following

    def start(self, interval: float | None = None) -> "RaceLiveView":
        """Refresh both sides and the overlay in the background (see `LiveView.start`)."""
        if interval is not None:
            self.interval = interval
        for side in self.sides:
            side.start(interval)
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="sdpg-raceview", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for side in self.sides:
            side.stop()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the refreshers to end (after `stop()`, or once both runs have ended and been drawn)."""
        if self._thread is not None:
            self._thread.join(timeout)
        for side in self.sides:
            side.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            done = all(status in TERMINAL for status in self.view.statuses())
            self.update()
            if done:
                return

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)
