"""A race: two runs that differ only in the method, trained at the same time, steered as one.

Design choices:
- The runs are copies of one config with only `loss.method` changed (task, seed, learning rate, data order and
  every other setting equal); each writes its own run directory, `<race dir>/<method>`, so each is an ordinary
  run that the page, the notebook and `RecordStream.open` replay on their own.
- Both run in this process, each in its run handle's thread: pause, resume and stop go to both. Threads share
  the CPU cores and torch's global random stream, so each run is about half as fast as alone on 2 cores and
  its samples are not those of the same run trained alone (the prompt order is: it comes from the seed).
- A race directory is recognised by its `race.json` (the methods and their run directories).
- The race has one status (`race_status`): while either run is still going, the more active of the two (a pause
  shows once both have paused); once both have ended, the worse ending (crashed, then stopped, then finished).
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from sdpg.config import TrainConfig
from sdpg.methods import METHODS
from sdpg.run import ACTIVE, RunHandle

RACE_FILE = "race.json"
DEFAULT_METHODS = ("grpo", "sdpg")
RACE_ORDER = ("running", "loading", "created", "stopping", "paused", "crashed", "incomplete", "stopped", "finished")
"""run statuses from the one that decides a race's status to the one that decides it last (see `race_status`)"""


def race_status(statuses: list[str]) -> str:
    """The race's status from its runs' (`sdpg.run.STATUSES`): the first of `RACE_ORDER` that any run has."""
    unknown = [s for s in statuses if s not in RACE_ORDER]
    if unknown or not statuses:
        raise ValueError(f"race_status: statuses {statuses} are not run statuses of a started race")
    return next(s for s in RACE_ORDER if s in statuses)


def race_configs(base: TrainConfig, race_dir: str | Path, methods: tuple[str, str] = DEFAULT_METHODS
                 ) -> list[TrainConfig]:
    """One config per method: `base` with only the method and the run directory changed."""
    if len(methods) != 2 or methods[0] == methods[1]:
        raise ValueError(f"a race needs two different methods, got {list(methods)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown} for the race; known: {sorted(METHODS)}")
    configs = []
    for method in methods:
        cfg = TrainConfig.from_dict(base.to_dict())
        cfg.loss.method = method
        cfg.run.run_dir = str(Path(race_dir) / method)
        configs.append(cfg.validate())
    return configs


def fresh_race_dir(runs_root: str | Path, methods: tuple[str, str] = DEFAULT_METHODS) -> Path:
    """`runs_root/race-<a>-<b>-<time>`, with a suffix if that exists already."""
    base = Path(runs_root) / f"race-{methods[0]}-{methods[1]}-{datetime.now():%Y%m%d-%H%M%S}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def race_runs(race_dir: str | Path) -> list[tuple[str, Path]]:
    """(method, run directory) of a recorded race, from its `race.json`; ValueError when it is not a race."""
    path = Path(race_dir) / RACE_FILE
    try:
        record = json.loads(path.read_text())
        return [(m, Path(race_dir) / name) for m, name in zip(record["methods"], record["runs"], strict=True)]
    except FileNotFoundError:
        raise ValueError(f"{race_dir} is not a race directory (no {RACE_FILE})") from None
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid race record ({type(err).__name__}: {err})") from None


class Race:
    """Two run handles started, paused, resumed and stopped together."""

    def __init__(self, base: TrainConfig, race_dir: str | Path, methods: tuple[str, str] = DEFAULT_METHODS, *,
                 run_factory=RunHandle):
        self.race_dir = Path(race_dir)
        self.methods = tuple(methods)
        self.handles = [run_factory(cfg) for cfg in race_configs(base, self.race_dir, self.methods)]

    def start(self) -> "Race":
        self.race_dir.mkdir(parents=True, exist_ok=True)
        record = {"methods": list(self.methods), "runs": [h.run_dir.name for h in self.handles]}
        (self.race_dir / RACE_FILE).write_text(json.dumps(record, indent=2))
        for handle in self.handles:
            handle.start()
        return self

    def pause(self) -> None:
        for handle in self.handles:
            handle.pause()

    def resume(self) -> None:
        for handle in self.handles:
            handle.resume()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        for handle in self.handles:
            handle.stop(wait=False)
        if wait:
            self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        for handle in self.handles:
            handle.join(timeout)

    @property
    def active(self) -> bool:
        """Either run still loading, running or paused."""
        return any(h.status in ACTIVE for h in self.handles)

    @property
    def status(self) -> str:
        """One status for both runs (`race_status`)."""
        return race_status([h.status for h in self.handles])

    @property
    def alive(self) -> bool:
        return any(h.alive for h in self.handles)
