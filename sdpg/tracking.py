"""Mirror the metric stream to an experiment tracker: trackio, Weights & Biases or TensorBoard (off by default).

Design choices:
- The record stream stays the source of truth; a tracker receives a copy of each metrics row (numbers
  only: list-valued keys such as `adv/values` stay in the records) under the same namespaced keys and
  the same 1-based training step.
- None of the packages is a requirement: each is imported only when `run.report_to` names it, and a
  missing one is refused by `TrainConfig.validate` with the pip command, before any model loads.
- TensorBoard writes under `<run_dir>/tensorboard`, trackio and wandb into their own local stores
  (trackio is local by default; wandb follows its own login / `WANDB_MODE`), all under project
  `sdpg-lab`, named after the run directory.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

TRACKERS = {"trackio": "trackio", "wandb": "wandb", "tensorboard": "tensorboard"}
"""`run.report_to` value -> the package it needs"""
PROJECT = "sdpg-lab"


def missing_package(report_to: str) -> str | None:
    """The package `report_to` needs when it is not installed (None when it is, or when nothing is asked)."""
    package = TRACKERS.get(report_to)
    return package if package and importlib.util.find_spec(package) is None else None


def scalars(metrics: dict) -> dict[str, float]:
    """The finite numbers of a metrics row (`step` and `time` left out: the step is passed on its own)."""
    return {k: float(v) for k, v in metrics.items() if k not in ("step", "time") and isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(v)}


class Tracker:
    """One run's mirror: `log(step, metrics)` per metrics row, `close()` at the end."""

    def __init__(self, report_to: str, run_dir: str | Path, config: dict):
        if report_to not in TRACKERS:
            raise ValueError(f"run.report_to={report_to!r} is invalid: must be one of {sorted(TRACKERS)} or ''")
        self.kind, run_dir = report_to, Path(run_dir)
        if report_to == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # needs the optional tensorboard package

            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        elif report_to == "wandb":
            import wandb

            self._run = wandb.init(project=PROJECT, name=run_dir.name, config=config, dir=str(run_dir))
        else:
            import trackio

            self._trackio = trackio
            trackio.init(project=PROJECT, name=run_dir.name, config=config)

    def log(self, step: int, metrics: dict) -> None:
        values = scalars(metrics)
        if self.kind == "tensorboard":
            for key, value in values.items():
                self._writer.add_scalar(key, value, global_step=step)
            self._writer.flush()
        elif self.kind == "wandb":
            self._run.log(values, step=step)
        else:
            self._trackio.log(values, step=step)

    def close(self) -> None:
        if self.kind == "tensorboard":
            self._writer.close()
        elif self.kind == "wandb":
            self._run.finish()
        else:
            self._trackio.finish()
