"""What a run's faces show, decided once: the page (`app.py`) and the notebook widget (`lab.widgets`) only adapt it.

Design choices:
- A `RunView` holds at most one live run handle and an optional recording browsed instead of it (the page's
  Replay tab, or a notebook widget opened on a `RecordStream`). The version, the status card, the browsable
  steps, the step to show and the picked group all come from here, so the two faces cannot drift apart.
- `version()` changes whenever anything a view draws could have changed; a face redraws only when it does.
- A step is browsable when it has rollout records or recorded advantages (the advantage views need only those).
- A recording's state comes from its last lifecycle event, a live run's from its handle (which says
  "stopping" from a stop request until its thread ends); what each state allows is `sdpg.run.ACTIONS`.
"""
from __future__ import annotations

from lab.status import health_banner, status_html
from lab.warmstart import warmstart_html
from sdpg.records import RecordStream
from sdpg.run import ACTIONS, replay_status

LOADING_NOTE = ("Loading model and data, then a first held-out evaluation. The embedded model is warm-started "
                "once per settings (a few minutes on a CPU) and loaded from the cache afterwards.")
IDLE_NOTE = "No run yet: choose settings and press Start, or open a run in the Replay tab."


def browsable_steps(stream: RecordStream | None) -> list[int]:
    """Steps with rollout records or recorded advantages: the steps the selection views can show."""
    if stream is None:
        return []
    with_adv = {r["step"] for r in stream.metrics() if r.get("adv/values")}
    return sorted(with_adv | set(stream.rollout_steps()))


def follow_step(choices: list[int], step, follow: bool) -> int | None:
    """The step to show: the newest when following or when `step` is not browsable, else `step`."""
    if not choices:
        return None
    return choices[-1] if follow or step not in choices else step


def shift_step(choices: list[int], step, delta: int) -> int | None:
    """The browsable step `delta` places from `step` (counted from the newest when `step` is not browsable)."""
    if not choices:
        return None
    i = choices.index(step) if step in choices else len(choices) - 1
    return choices[max(0, min(len(choices) - 1, i + delta))]


def pick_group(stream: RecordStream | None, step, group) -> dict | None:
    """The recorded group `group` of `step`, else the step's first group, else None."""
    groups = stream.rollouts(step) if stream is not None and step is not None else []
    return next((g for g in groups if g.get("group") == group), groups[0] if groups else None)


def group_ids(stream: RecordStream | None, step) -> list[int]:
    return [g["group"] for g in stream.rollouts(step)] if stream is not None and step is not None else []


def metrics_row(stream: RecordStream | None, step) -> dict | None:
    """The last metrics row of `step` (a resumed run may have written it twice)."""
    rows = [r for r in stream.metrics() if r["step"] == step] if stream is not None else []
    return rows[-1] if rows else None


class RunView:
    """At most one live run (`handle`: anything with `records`, `status`, `step`, `total_steps`, `run_dir`,
    `error`), plus an optional recording shown instead of it."""

    def __init__(self, handle=None, replay: RecordStream | None = None):
        self.handle = handle
        self.replay = replay

    @classmethod
    def of(cls, source) -> "RunView":
        """A view of a run handle or of a recorded stream."""
        if isinstance(source, RecordStream):
            return cls(replay=source)
        if not hasattr(source, "records"):
            raise TypeError(f"a run view needs a run handle or a RecordStream, got {type(source).__name__}")
        return cls(handle=source)

    def stream(self) -> RecordStream | None:
        if self.replay is not None:
            return self.replay
        return self.handle.records if self.handle is not None else None

    def live_status(self) -> str:
        """The live run's status ("idle" without one), whatever recording is shown."""
        return "idle" if self.handle is None else self.handle.status

    def allowed_actions(self) -> tuple[str, ...]:
        """What the controls may ask of the live run now (`sdpg.run.ACTIONS`)."""
        return ACTIONS[self.live_status()]

    def version(self) -> tuple:
        """Changes whenever anything a view draws could have changed."""
        stream = self.stream()
        if stream is None:
            return ("empty", self.live_status())
        stream.refresh()
        return (id(stream), len(stream.metrics()), len(stream.rollout_steps()), len(stream.events()),
                self.live_status(), self.handle.step if self.handle else 0)

    def status_card(self) -> str:
        """The status card of what is shown, with its run's health events as a banner under it."""
        stream = self.stream()
        return self._card() + (health_banner(stream.events()) if stream is not None else "")

    def _card(self) -> str:
        if self.replay is not None:
            return self._replay_card()
        if self.handle is None:
            return status_html("idle", note=IDLE_NOTE)
        h = self.handle
        return status_html(self.live_status(), step=h.step, total=h.total_steps, source="live run",
                           run_dir=str(h.run_dir), error=h.error, events=h.records.events(),
                           note=LOADING_NOTE if h.status == "loading" else "") + warmstart_html(h.records.events())

    def _replay_card(self) -> str:
        status, error = replay_status(self.replay.events())
        metrics = self.replay.metrics()
        note = ""
        if self.handle is not None:
            note = (f"live run: {self.live_status()} at step {self.handle.step} / {self.handle.total_steps} — "
                    "'Show live run' in the Replay tab")
        return status_html(status, step=metrics[-1]["step"] if metrics else 0, source="replay",
                           total=self.replay.config().get("run", {}).get("steps"), error=error,
                           run_dir=str(self.replay.run_dir or ""), events=self.replay.events(), note=note)
