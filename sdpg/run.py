"""A training run in a background thread, controlled by a handle: start / pause / resume / stop.

Design choices:
- `RunHandle` owns one run directory: `config.json`, the record stream files, `checkpoints/`.
  Everything the UI knows about the run it reads from `handle.records` and `handle.status`.
- Control requests (pause, stop, checkpoint) are flags the training thread honours between steps, so a
  step is never cut in half; `stop()` saves a checkpoint before the thread ends.
- A crash is caught in the thread: status becomes "crashed", the message and traceback tail land in
  `handle.error` and in an `error` event, and the records and last checkpoint stay on disk.
- `build_trainer` is the one place that turns a config into model, data, verifier and trainer; the CLI,
  the dashboard and the notebooks all go through it.
"""
from __future__ import annotations

import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

import torch

from sdpg.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from sdpg.config import TrainConfig
from sdpg.data import PromptRow, load_rows
from sdpg.methods import get_method
from sdpg.memory import ModelShape, check_memory, model_config
from sdpg.models import load_model_and_tokenizer, make_reference, resolve_device
from sdpg.records import RecordStream
from sdpg.reward import MathVerifier
from sdpg.tasks import get_task
from sdpg.trainer import Trainer

STATUSES = ("created", "loading", "running", "paused", "stopping", "stopped", "finished", "crashed")


def load_data(cfg: TrainConfig) -> tuple[list[PromptRow], list[PromptRow]]:
    d = cfg.data
    task = get_task(d.task, tuple(d.digits) if d.task == "add" else None)

    def rows(spec: str, split: str, n: int) -> list[PromptRow]:
        if spec == "embedded":
            return task.rows(n, seed=cfg.run.seed, split=split, context=d.context)
        return load_rows(spec, skip_bad_rows=d.skip_bad_rows).rows

    return rows(d.train, "train", d.n_train), rows(d.val, "val", d.n_val)


def build_trainer(cfg: TrainConfig, records: RecordStream, *, progress: bool = True) -> Trainer:
    cfg.validate()
    torch.manual_seed(cfg.run.seed)
    train_rows, val_rows = load_data(cfg)
    if not train_rows:
        raise ValueError(f"data.train={cfg.data.train!r} gave no training rows")
    device = resolve_device(cfg.model.device)
    if device.type == "cuda" and cfg.run.memory_check:  # refuse before loading a model that will not fit
        check_memory(cfg, ModelShape.from_config(model_config(cfg)),
                     torch.cuda.get_device_properties(device).total_memory, uses_reference=uses_reference(cfg))
    model, tokenizer = load_model_and_tokenizer(cfg.model, device=device, data_cfg=cfg.data, progress=progress)
    ref = make_reference(model) if uses_reference(cfg) else None
    verifier = MathVerifier(timeout_s=cfg.reward.timeout_s, workers=cfg.reward.workers)
    return Trainer(cfg, model=model, tokenizer=tokenizer, ref_model=ref, train_rows=train_rows,
                   val_rows=val_rows, records=records, verifier=verifier)


def uses_reference(cfg: TrainConfig) -> bool:
    """Whether the method of `cfg` needs the frozen reference model (the alpha anchor or a reference teacher)."""
    needs = get_method(cfg.loss.method).needs
    return (cfg.loss.alpha > 0 and "ref_logp" in needs) or bool({"ref_teacher_logp", "ref_distill_kl"} & needs)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.loss.method}-{datetime.now():%Y%m%d-%H%M%S}-s{cfg.run.seed}"


class RunHandle:
    """One training run in a background thread, plus its record stream and run directory."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool = False):
        self.cfg = cfg.validate()
        self.run_dir = Path(cfg.run.run_dir) if cfg.run.run_dir else default_run_dir(cfg)
        if resume and latest_checkpoint(self.run_dir) is None:
            raise FileNotFoundError(f"cannot resume: {self.run_dir} has no complete checkpoint")
        self.resumed = resume
        self.progress = progress
        self.records = RecordStream(self.run_dir)
        self.status = "created"
        self.error: str | None = None
        self.step = 0
        self.total_steps = cfg.run.steps
        self.trainer: Trainer | None = None
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._save = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- control ----
    def start(self) -> "RunHandle":
        if self._thread is not None:
            raise RuntimeError(f"run {self.run_dir} was already started")
        self._thread = threading.Thread(target=self._main, name=f"sdpg-run-{self.run_dir.name}", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        if self.status in ("loading", "running"):
            self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        self._stop.set()
        self._pause.clear()
        if wait:
            self.join(timeout)

    def request_checkpoint(self) -> None:
        self._save.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the training thread ----
    def _main(self) -> None:
        try:
            self.status = "loading"
            self.records.emit_event("start", run_dir=str(self.run_dir), resume=self.resumed)
            self.records.write_config(self.cfg.to_dict())
            self.trainer = build_trainer(self.cfg, self.records, progress=self.progress)
            if self.resumed:
                ckpt = latest_checkpoint(self.run_dir)
                self.step = load_checkpoint(self.trainer, ckpt)
                self.trainer.engine.sync_weights(self.trainer.model)  # an external engine still has the initial weights
                self.records.truncate_after(self.step)
                self.records.emit_event("resume_from", step=self.step, checkpoint=str(ckpt))
            else:
                self.records.emit_metrics(0, self.trainer.evaluate())
            self._loop()
        except Exception as exc:  # the thread must report, never die silently
            self.error = f"{type(exc).__name__}: {exc}\n\n" + "".join(traceback.format_exc().splitlines(True)[-12:])
            self.status = "crashed"
            self.records.emit_event("error", step=self.step, message=str(exc), traceback=traceback.format_exc())
        finally:
            if self.trainer is not None:
                self.trainer.verifier.close()

    def _loop(self) -> None:
        run = self.cfg.run
        trainer = self.trainer
        self.status = "running"
        while trainer.step < run.steps and not self._stop.is_set():
            if self._pause.is_set():
                self._wait_while_paused()
                continue
            metrics = trainer.train_step()
            self.step = trainer.step
            if trainer.step == run.steps or (run.eval_every and trainer.step % run.eval_every == 0):
                metrics.update(trainer.evaluate())
            self.records.emit_metrics(trainer.step, metrics)
            if self._save.is_set() or (run.save_every and trainer.step % run.save_every == 0):
                self._checkpoint()
        self._checkpoint()
        self.status = "finished" if trainer.step >= run.steps else "stopped"
        self.records.emit_event(self.status, step=trainer.step)

    def _wait_while_paused(self) -> None:
        self.status = "paused"
        self.records.emit_event("pause", step=self.step)
        while self._pause.is_set() and not self._stop.is_set():
            if self._save.is_set():
                self._checkpoint()
            time.sleep(0.05)
        self.status = "running"
        self.records.emit_event("resume", step=self.step)

    def _checkpoint(self) -> None:
        self._save.clear()
        path = save_checkpoint(self.trainer, self.run_dir)
        self.records.emit_event("checkpoint", step=self.trainer.step, path=str(path))
