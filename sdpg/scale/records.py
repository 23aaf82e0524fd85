"""A TRL / transformers callback that writes our record stream, so the lab replays a distributed run like a local one.

Design choices:
- Only process 0 of the run (accelerate's main process) writes; every other process's callback does nothing. What it
  writes goes through `sdpg.records.RecordStream`, so the files, their schema and `RecordStream.open` are the
  engine's. The stream and `config.json` are created with the callback, so a crash before training starts is
  recorded too.
- A training step's metrics row (complete: the trainer builds it with the engine's `sdpg.step.step_metrics`) and
  rollout groups arrive from `SDPGTrainer` as an `on_sdpg_step` event, at the log of its last update, and are
  written as they come, with a `step_skipped` event per skipped update. The trainer closes a step when it logs, so
  it has to log every update (`logging_steps=1`, as `sdpg.scale.config` sets it); anything else is refused at the
  start of training. TRL's global step counts updates: checkpoint events carry the training step.
- Lifecycle events mirror `sdpg.run`: start, checkpoint (TRL's checkpoint folder), finished or stopped, and error
  (`record_error`, for the launcher's exception handler), so `lab.replay_status` reads a distributed run's state.
"""
from __future__ import annotations

import traceback
from pathlib import Path

from accelerate import PartialState
from transformers import TrainerCallback

from sdpg.records import RecordStream


class RecordStreamCallback(TrainerCallback):
    """Writes metrics, rollout groups and lifecycle events of an `SDPGTrainer` run to `run_dir`, with `config` (the
    run's `TrainConfig.to_dict()`) as its `config.json`. `records` is the stream on process 0, None elsewhere."""

    def __init__(self, run_dir: str | Path, config: dict):
        self.run_dir = Path(run_dir)
        self.records = RecordStream(self.run_dir) if PartialState().is_main_process else None
        if self.records is not None:
            self.records.write_config(config)
        self._updates = 1

    def on_train_begin(self, args, state, control, **kwargs):
        if args.logging_strategy != "steps" or args.logging_steps != 1:
            raise ValueError(f"RecordStreamCallback writes one metrics row per step and needs logging every step "
                             f"(logging_strategy='steps', logging_steps=1), got {args.logging_strategy!r}, "
                             f"{args.logging_steps}")
        if self.records is not None:
            self.records.emit_event("start", run_dir=str(self.run_dir), resume=False, engine="trl",
                                    processes=args.world_size)

    def on_sdpg_step(self, args, state, control, *, step: int, metrics: dict, groups: list[dict],
                     skipped: list[str], updates: int):
        """The trainer's metrics row and rollout groups of training step `step` (`updates` optimizer updates), after
        its last update, and why any of its updates was skipped."""
        if self.records is None:
            return
        self._updates = updates
        for reason in skipped:
            self.records.emit_event("step_skipped", step=step, reason=reason)
        self.records.emit_rollouts(step, groups)
        self.records.emit_metrics(step, metrics)

    def on_save(self, args, state, control, **kwargs):
        if self.records is not None:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.records.emit_event("checkpoint", step=state.global_step // self._updates, path=str(path))

    def on_train_end(self, args, state, control, **kwargs):
        if self.records is not None:
            status = "finished" if state.global_step >= state.max_steps else "stopped"
            self.records.emit_event(status, step=state.global_step // self._updates)

    def record_error(self, exc: BaseException, step: int) -> None:
        """Record a crash as the engine does (an `error` event with message and traceback); no-op off process 0."""
        if self.records is not None:
            self.records.emit_event("error", step=step, message=str(exc),
                                    traceback="".join(traceback.format_exception(exc)))
