"""What a race shows: two runs that differ only in the method, one picture side by side.

Design choices:
- `RaceView` is two `lab.viewmodel.RunView`s, one per method, each over a live run handle or a recorded run;
  a live race and the replay of a finished one are drawn by the same code.
- The curves are the comparison overlay (`lab.overlay.overlay_figure`), one colour per method.
- `race_card` is the page's top status card while a race is the page's training (`lab.status.race_card_html`).
- The step both runs show is one both have records for, so the two heatmaps and inspectors compare the same
  step and the same group index (the runs draw the same prompts in the same order: same seed).
"""
from __future__ import annotations

import html
from pathlib import Path

from lab.heatmap import token_heatmap
from lab.inspector import rollout_html
from lab.overlay import overlay_figure
from lab.status import race_card_html
from lab.viewmodel import RunView, browsable_steps, pick_group
from sdpg.race import Race, race_runs
from sdpg.run import replay_status
from sdpg.records import RecordStream


class RaceView:
    """Two runs, one per method, seen side by side: a live `Race` or a recorded race directory."""

    def __init__(self, methods: list[str], views: list[RunView], race_dir: str | Path):
        self.methods, self.views, self.race_dir = list(methods), views, Path(race_dir)

    @classmethod
    def of(cls, source: "Race | str | Path") -> "RaceView":
        """A view of a live race or of a race directory (ValueError when it is not one)."""
        if isinstance(source, Race):
            return cls(list(source.methods), [RunView.of(h) for h in source.handles], source.race_dir)
        runs = race_runs(source)
        return cls([m for m, _ in runs], [RunView.of(RecordStream.open(d)) for _, d in runs], source)

    def streams(self) -> list[RecordStream | None]:
        return [v.stream() for v in self.views]

    def version(self) -> tuple:
        return tuple(v.version() for v in self.views)

    def statuses(self) -> list[str]:
        """Each run's status: the live handle's, or a recording's from its last lifecycle event."""
        return [v.live_status() if v.replay is None else replay_status(v.replay.events())[0] for v in self.views]

    def common_steps(self) -> list[int]:
        """Steps that both runs can show."""
        steps = [set(browsable_steps(s)) for s in self.streams()]
        return sorted(steps[0] & steps[1])

    def run_dicts(self) -> list[dict]:
        """The runs as the comparison overlay takes them: one line colour per method."""
        return [{"name": m, "method": m, "seed": (s.config().get("run") or {}).get("seed"), "metrics": s.metrics()}
                for m, s in zip(self.methods, self.streams()) if s is not None]


def race_curves(view: RaceView):
    """Both runs' curves overlaid on the comparison panels."""
    return overlay_figure(view.run_dicts())


def race_status_html(view: RaceView) -> str:
    """One line: each method with its status, step and run directory."""
    parts = []
    for method, v, status in zip(view.methods, view.views, view.statuses()):
        stream = v.stream()
        metrics = stream.metrics() if stream is not None else []
        step = metrics[-1]["step"] if metrics else 0
        parts.append(f"<b>{html.escape(method.upper())}</b>: {html.escape(status)} at step {step} "
                     f"<code>{html.escape(str(stream.run_dir if stream is not None else ''))}</code>")
    return f"<div id='sdpg-race-state'>Race <code>{html.escape(str(view.race_dir))}</code> — {' · '.join(parts)}</div>"


def race_card(race: Race) -> str:
    """The status card of a live race: its status, the step both runs have reached, each run's state."""
    runs = [{"method": m, "status": h.status, "step": h.step, "total": h.total_steps, "error": h.error}
            for m, h in zip(race.methods, race.handles)]
    return race_card_html(race.status, runs, race_dir=str(race.race_dir))


def race_heatmaps(view: RaceView, step, group, color_by: str = "kl") -> list:
    """The token heatmap of the same step and group in each run."""
    figures = []
    for method, stream in zip(view.methods, view.streams()):
        fig = token_heatmap(pick_group(stream, step, group), color_by)
        fig.update_layout(title=f"{method.upper()} — {fig.layout.title.text or ''}")
        figures.append(fig)
    return figures


def race_inspectors(view: RaceView, step, group) -> list[str]:
    """The rollout inspector card of the same step and group in each run."""
    return [f"<h4>{html.escape(m.upper())}</h4>" + rollout_html(pick_group(s, step, group))
            for m, s in zip(view.methods, view.streams())]
