"""A training run in a background thread, controlled by a handle: start / pause / resume / stop.

Design choices:
- `RunHandle` owns one run directory: `config.json`, the record stream files, `checkpoints/`.
  Everything the UI knows about the run it reads from `handle.records` and `handle.status`.
- Control requests (pause, checkpoint) are flags the training thread honours between steps. A stop is also
  honoured inside every long phase (`sdpg.stopping`: warm start, rollout, evaluation, playground) within
  seconds; a rollout cut short is thrown away with its sampler and RNG state restored, so the final checkpoint
  is the last completed step and a resume continues exactly. The final checkpoint is saved once.
- `call_between_steps(fn)` runs `fn(trainer)` on the training thread between two steps (or while paused),
  so a tool reading the weights (the playground) never sees half an update; once no thread trains, it runs
  in the caller's thread.
- The statuses a run can show, what may be asked of it in each (`ACTIONS`) and how a recording's events
  spell them (`LIFECYCLE`) are defined here once; the page, the notebook widget and the views read them.
- A crash is caught in the thread: status becomes "crashed", the message and traceback tail land in
  `handle.error` and in an `error` event, and the records and last checkpoint stay on disk.
- Health checks (`sdpg.health`) read every metrics row the run emits; what they find becomes a
  `health` event, so a run that stops learning says so wherever its records are shown.
- `build_trainer` is the one place that turns a config into model, data, verifier and trainer; the CLI,
  the dashboard and the notebooks all go through it. What it notices about the data (rows skipped, rows
  without a teacher context) is printed and recorded as an event, never dropped silently.
- A resume continues one run: settings the restored state would override (optimizer hyper-parameters,
  model, data, seed, method) are refused; the changes that do take effect are recorded as an event.
"""
from __future__ import annotations

import json
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path

import torch

from sdpg.checkpoint import (latest_checkpoint, restore_sampling_state, resume_checkpoint, sampling_state,
                             save_checkpoint)
from sdpg.config import TrainConfig
from sdpg.data import DataError, LoadedRows, PromptRow, load_rows, render_prompts, rows_without_context
from sdpg.health import HealthEvent, HealthMonitor, health_events
from sdpg.methods import check_config, get_method
from sdpg.memory import ModelShape, check_memory, host_memory_bytes, model_config
from sdpg.models import load_model_and_tokenizer, make_reference, resolve_device
from sdpg.records import CONFIG_FILE, EVENTS, RecordStream, StorageError
from sdpg.reward import MathVerifier
from sdpg.stopping import Stopped, stop_scope
from sdpg.tasks import get_task
from sdpg.tracking import Tracker
from sdpg.trainer import Trainer

STATUSES = ("idle", "created", "loading", "running", "paused", "stopping", "stopped", "finished", "crashed",
            "incomplete")
"""every state a run can show: "idle" before any run, a `RunHandle.status`, or "incomplete" for a recording whose
events end without saying how the run ended (cut off, or still being written by another process)"""
ACTIVE = ("created", "loading", "running", "paused")
"""a run whose thread has not ended (what may be asked of it is `ACTIONS`); no second run may start meanwhile"""
TERMINAL = ("stopped", "finished", "crashed")
"""a run whose thread has ended; its records are complete"""
ACTIONS: dict[str, tuple[str, ...]] = {
    "idle": ("start",),
    "created": ("stop",),
    "loading": ("pause", "stop"),
    "running": ("pause", "stop", "checkpoint"),
    "paused": ("resume", "stop", "checkpoint"),
    "stopping": (),
    "stopped": ("start",),
    "finished": ("start",),
    "crashed": ("start",),
    "incomplete": ("start",),
}
"""status -> what may be asked of the run in it ("start" = start another run); pause, stop and checkpoint are
honoured between steps, and a stop already under way allows nothing more"""
LIFECYCLE = {name: event.status for name, event in EVENTS.items() if event.status}
"""event -> the status a recorded run has after it (from the event schema, `sdpg.records.EVENTS`)"""
FIXED_ON_RESUME = {
    "optim.lr": "the restored optimizer keeps its learning rate",
    "optim.betas": "the restored optimizer keeps its betas",
    "optim.weight_decay": "the restored optimizer keeps its weight decay",
    "model.name": "the checkpoint holds that model's weights",
    "model.dtype": "the checkpoint's weights and optimizer state have that dtype",
    "run.seed": "the restored sampler and random states come from that seed",
    "loss.method": "the run's records are of that method",
}
"""settings a resume cannot change (every `data.*` setting too: the restored sampler walks that data)"""


def replay_status(events: list[dict]) -> tuple[str, str | None]:
    """(status, error message) of a recorded run, from its last lifecycle event; "incomplete" when that event
    says the run was still going."""
    status, error = "incomplete", None
    for e in events:
        status = LIFECYCLE.get(e.get("event"), status)
        if e.get("event") == "error":
            error = e.get("message") or "error"
            if e.get("traceback"):
                error += "\n\n" + "".join(e["traceback"].splitlines(True)[-12:])
    return (status if status in TERMINAL else "incomplete"), error


def load_data(cfg: TrainConfig) -> tuple[list[PromptRow], list[PromptRow]]:
    train, val = load_datasets(cfg)
    return train.rows, val.rows


def load_datasets(cfg: TrainConfig) -> tuple[LoadedRows, LoadedRows]:
    """The training and held-out rows with what was skipped and where each kept row is in its file."""
    d = cfg.data
    task = get_task(d.task, tuple(d.digits))

    def rows(spec: str, split: str, n: int) -> LoadedRows:
        if spec == "embedded":
            return LoadedRows(task.rows(n, seed=cfg.run.seed, split=split, context=d.context), skipped=0)
        return load_rows(spec, skip_bad_rows=d.skip_bad_rows)

    return rows(d.train, "train", d.n_train), rows(d.val, "val", d.n_val)


def build_trainer(cfg: TrainConfig, records: RecordStream, *, progress: bool = True) -> Trainer:
    uses_reference = get_method(check_config(cfg).loss.method).uses_reference(cfg.loss)  # refuses bad settings first
    torch.manual_seed(cfg.run.seed)
    train, val = load_datasets(cfg)
    device = resolve_device(cfg.model.device)
    if cfg.run.memory_check:  # refuse before loading a model (or sampling a batch) that will not fit
        on_cpu = device.type != "cuda"
        total = host_memory_bytes() if on_cpu else torch.cuda.get_device_properties(device).total_memory
        check_memory(cfg, ModelShape.from_config(model_config(cfg)), total, uses_reference=uses_reference,
                     on_cpu=on_cpu)
    model, tokenizer = load_model_and_tokenizer(cfg.model, device=device, data_cfg=cfg.data, progress=progress,
                                                on_warmstart=warmstart_recorder(records))
    train, val = (check_prompt_lengths(cfg, tokenizer, loaded, spec) for loaded, spec in
                  ((train, cfg.data.train), (val, cfg.data.val)))
    check_positions(cfg, model, tokenizer, [*train.rows, *val.rows])
    for loaded, spec, split in ((train, cfg.data.train, "train"), (val, cfg.data.val, "val")):
        report_data(cfg, records, loaded, spec, split)
    train_rows, val_rows = train.rows, val.rows
    ref = make_reference(model) if uses_reference else None
    verifier = MathVerifier(timeout_s=cfg.reward.timeout_s, workers=cfg.reward.workers, scale=cfg.reward.scale)
    return Trainer(cfg, model=model, tokenizer=tokenizer, ref_model=ref, train_rows=train_rows,
                   val_rows=val_rows, records=records, verifier=verifier)


def check_prompt_lengths(cfg: TrainConfig, tokenizer, loaded: LoadedRows, spec: str) -> LoadedRows:
    """A file row whose rendered teacher prompt (the longer side) exceeds `rollout.max_prompt_tokens` is a bad
    row, found at load (naming file and row) rather than when a step samples it."""
    if not loaded.where:
        return loaded
    limit = cfg.rollout.max_prompt_tokens
    texts = render_prompts(tokenizer, [row.teacher_prompt for row in loaded.rows],
                           enable_thinking=cfg.model.enable_thinking)
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if not too_long:
        return loaded
    problems = tuple(f"{spec} {loaded.where[i]}: prompt is {lengths[i]} tokens with its teacher context, more "
                     f"than rollout.max_prompt_tokens={limit} (shorten the row or raise --rollout.max_prompt_tokens)"
                     for i in too_long)
    if not cfg.data.skip_bad_rows or len(too_long) == len(loaded.rows):
        raise DataError(problems[0] + (f" ({len(too_long)} rows are too long)" if len(too_long) > 1 else ""))
    keep = sorted(set(range(len(loaded.rows))) - set(too_long))
    return LoadedRows([loaded.rows[i] for i in keep], skipped=loaded.skipped + len(too_long),
                      problems=loaded.problems + problems, where=tuple(loaded.where[i] for i in keep))


POSITION_CHECK_ROWS = 256
"""rows (the longest by characters) whose token count decides the longest prompt in `check_positions`"""


def check_positions(cfg: TrainConfig, model, tokenizer, rows: list[PromptRow]) -> None:
    """ValueError naming both numbers when the longest prompt (with its teacher context) plus
    rollout.max_new_tokens exceeds the model's `max_position_embeddings` (positions past it are not trained).

    The longest prompt is measured among the POSITION_CHECK_ROWS rows with the most characters (tokenizing every
    row of a large file at each start would cost seconds)."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if not limit or not rows:
        return
    longest_texts = sorted((row.teacher_prompt for row in rows), key=len)[-POSITION_CHECK_ROWS:]
    texts = render_prompts(tokenizer, longest_texts, enable_thinking=cfg.model.enable_thinking)
    longest = max(len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids)
    if longest + cfg.rollout.max_new_tokens > limit:
        raise ValueError(f"rollout.max_new_tokens={cfg.rollout.max_new_tokens} after the longest prompt ({longest} "
                         f"tokens with its teacher context) needs {longest + cfg.rollout.max_new_tokens} positions; "
                         f"the model has max_position_embeddings={limit}. Lower --rollout.max_new_tokens to at most "
                         f"{max(limit - longest, 0)} (or shorten the prompts)")


def report_data(cfg: TrainConfig, records: RecordStream, loaded: LoadedRows, spec: str, split: str) -> None:
    """Print and record what loading left out, and rows that give a teacher-using method no privileged context."""
    if loaded.skipped:
        message = (f"data.{split}: skipped {loaded.skipped} bad rows of {spec} (kept {len(loaded.rows)}); "
                   f"first: {'; '.join(loaded.problems[:3])}")
        print(f"warning: {message}", flush=True)
        records.emit_event("data_rows_skipped", split=split, file=spec, count=loaded.skipped,
                           kept=len(loaded.rows), reasons=list(loaded.problems[:5]), message=message)
    spec_method = get_method(cfg.loss.method)
    bare = rows_without_context(loaded.rows)
    if not bare or not (spec_method.distills or any(need.privileged for need in spec_method.needs)):
        return
    first = next(i for i, row in enumerate(loaded.rows) if not row.context.strip())
    where = f"{spec} {loaded.where[first]}" if loaded.where else spec
    message = (f"data.{split}: {bare} of {len(loaded.rows)} rows have no teacher context (no "
               f"[TEACHER_CONTEXT_TOKEN] or nothing after it; first: {where}), so method {cfg.loss.method!r} "
               f"distils from a teacher that sees only the student's prompt there")
    if cfg.data.require_context:
        raise DataError(f"{message} (--data.require_context refuses such rows)")
    print(f"warning: {message}", flush=True)
    records.emit_event("data_no_context", split=split, file=spec, count=bare, rows=len(loaded.rows), message=message)


def resume_changes(run_dir: Path, cfg: TrainConfig) -> dict[str, list]:
    """{setting: [saved, now]} for the settings `cfg` changes against the run's saved config; ValueError for a
    change the restored state would silently override."""
    saved_file = run_dir / CONFIG_FILE
    if not saved_file.exists():
        return {}
    saved = _flat(TrainConfig.from_dict(json.loads(saved_file.read_text())).to_dict())
    now = _flat(cfg.to_dict())
    changes = {key: [saved[key], now[key]] for key in now if now[key] != saved[key] and key != "run.run_dir"}
    for key, (old, new) in changes.items():
        why = FIXED_ON_RESUME.get(key) or ("the restored sampler walks that data" if key.startswith("data.") else "")
        if why:
            raise ValueError(f"cannot resume {run_dir} with --{key} {new!r} (the run has {old!r}): {why}. "
                             f"Resume without changing it, or start a new run")
    return changes


def _flat(config: dict) -> dict:
    return {f"{section}.{name}": value for section, fields in config.items() for name, value in fields.items()}


def sigterm_as_ctrl_c(signum, frame) -> None:
    """SIGTERM handler for a process that follows a run: the first SIGTERM stops it as Ctrl-C does (final
    checkpoint, `stopped`); later ones are ignored so they cannot cut that checkpoint short (`timeout` and
    supervisors that signal the whole process group deliver it twice)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


WARMSTART_EVENT_EVERY = 10
"""warm-start steps between two `warmstart` progress events (stopping checks are always recorded)"""


def warmstart_recorder(records: RecordStream):
    """A callback that turns the embedded warm start's progress into `warmstart` events: its first step, every
    WARMSTART_EVENT_EVERY-th, every skill check, the last, or one event saying the start came from the cache."""
    def record(info: dict) -> None:
        step = info.get("step", 0)
        if info.get("cached") or "check" in info or step in (1, info.get("steps")) or step % WARMSTART_EVENT_EVERY == 0:
            records.emit_event("warmstart", **info)
    return record


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.loss.method}-{datetime.now():%Y%m%d-%H%M%S}-s{cfg.run.seed}"


class RunHandle:
    """One training run in a background thread, plus its record stream and run directory."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, progress: bool = False):
        self.cfg = check_config(cfg)
        self.run_dir = Path(cfg.run.run_dir) if cfg.run.run_dir else default_run_dir(cfg)
        if resume and latest_checkpoint(self.run_dir) is None:
            raise FileNotFoundError(f"cannot resume: {self.run_dir} has no complete checkpoint")
        resolve_device(cfg.model.device)  # a device that does not exist is refused before the thread starts
        self.changes = resume_changes(self.run_dir, cfg) if resume else {}
        self.resumed = resume
        self.progress = progress
        self.records = RecordStream(self.run_dir, cache_mb=cfg.run.record_cache_mb)
        self._status = "created"
        self.error: str | None = None
        self.step = 0
        self.total_steps = cfg.run.steps
        self.trainer: Trainer | None = None
        self.health = HealthMonitor(total_steps=cfg.run.steps)
        self.tracker: Tracker | None = None
        self._pause = threading.Event()
        self._stop = threading.Event()
        self._save = threading.Event()
        self._thread: threading.Thread | None = None
        self._calls: queue.Queue[tuple[object, Future]] = queue.Queue()
        self._saved_step: int | None = None
        """the step of the checkpoint saved last by this handle (a final save never repeats it)"""

    @property
    def status(self) -> str:
        """One of `STATUSES`: the thread's phase, or "stopping" from a stop request until the thread ends."""
        if self._stop.is_set() and self._status in ACTIVE and self.alive:
            return "stopping"
        return self._status

    def allowed_actions(self) -> tuple[str, ...]:
        """What may be asked of this run now (`ACTIONS` of its status)."""
        return ACTIONS[self.status]

    # ---- control ----
    def start(self) -> "RunHandle":
        if self._thread is not None:
            raise RuntimeError(f"run {self.run_dir} was already started")
        self._thread = threading.Thread(target=self._main, name=f"sdpg-run-{self.run_dir.name}", daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        if "pause" in self.allowed_actions():
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

    def call_between_steps(self, fn, timeout: float | None = None):
        """`fn(trainer)` run between optimizer steps on the training thread; returns its result or raises its error."""
        future: Future = Future()
        self._calls.put((fn, future))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            if self._stop.is_set() and self.alive and future.cancel():  # a stopping run takes no new question
                raise Stopped("stop requested before the question reached the run")
            if not self.alive:  # nothing trains any more: no update to race
                self._serve_calls()
            if deadline is not None and time.monotonic() > deadline and future.cancel():  # never runs later
                raise TimeoutError(f"the run did not reach a step boundary within {timeout} s")
            time.sleep(0.02)
        return future.result()

    def _serve_calls(self) -> None:
        while True:
            try:
                fn, future = self._calls.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():  # its caller gave up waiting
                continue
            if self.trainer is None:
                future.set_exception(RuntimeError(f"run {self.run_dir} has no model loaded (status {self.status})"))
                continue
            try:
                future.set_result(fn(self.trainer))
            except Exception as exc:  # the caller gets the error; the run goes on
                future.set_exception(exc)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # ---- the training thread ----
    def _main(self) -> None:
        try:
            try:
                with stop_scope(self._stop):  # every long phase below honours Stop / SIGTERM within seconds
                    self._run()
            except Stopped as stop:  # before the first step: the warm start, loading or the first evaluation
                self._end(str(stop))
        except Exception as exc:  # the thread must report, never die silently
            self._crashed(exc)
        finally:
            if self.trainer is not None:
                self.trainer.verifier.close()
            if self.tracker is not None:
                self.tracker.close()

    def _run(self) -> None:
        self._status = "loading"
        self.records.emit_event("start", run_dir=str(self.run_dir), resume=self.resumed)
        self.records.write_config(self.cfg.to_dict())
        if self.cfg.run.report_to:
            self.tracker = Tracker(self.cfg.run.report_to, self.run_dir, self.cfg.to_dict())
        self.trainer = build_trainer(self.cfg, self.records, progress=self.progress)
        if self.resumed:
            self._resume()
        else:
            self._emit_metrics(0, self.trainer.evaluate())
        self._loop()

    def _resume(self) -> None:
        ckpt, self.step, skipped = resume_checkpoint(self.trainer, self.run_dir)
        self._saved_step = self.step
        for path, why in skipped:
            self.records.emit_event("checkpoint_skipped", checkpoint=str(path), reason=why)
            print(f"warning: skipped checkpoint {path}: {why}", flush=True)
        self.trainer.engine.sync_weights(self.trainer.model)  # an external engine still has the initial weights
        self.records.truncate_after(self.step)
        self.records.emit_event("resume_from", step=self.step, checkpoint=str(ckpt))
        if self.changes:
            self.records.emit_event("resume_changes", step=self.step, changes=self.changes)
        self.health = HealthMonitor.primed(self.records.metrics(), self.records.events(), self.cfg.run.steps)

    def _emit_metrics(self, step: int, metrics: dict) -> None:
        """Record a metrics row, mirror it to the experiment tracker when `run.report_to` names one, and report
        what the health checks make of it."""
        row = self.records.emit_metrics(step, metrics)
        if self.tracker is not None:
            self.tracker.log(step, row)
        self._report(self.health.observe(row))

    def _loop(self) -> None:
        run = self.cfg.run
        trainer = self.trainer
        self._status = "running"
        while trainer.step < run.steps and not self._stop.is_set():
            self._serve_calls()
            if self._pause.is_set():
                self._wait_while_paused()
                continue
            before = sampling_state(trainer)
            try:
                metrics = trainer.train_step()
            except Stopped as stop:  # cut short before its update: as if the step had not begun
                restore_sampling_state(trainer, before)
                return self._end(str(stop))
            self.step = trainer.step
            if trainer.step == run.steps or (run.eval_every and trainer.step % run.eval_every == 0):
                try:
                    metrics.update(trainer.evaluate())
                except Stopped as stop:  # the step's own records stay; only its evaluation is missing
                    self._emit_metrics(trainer.step, metrics)
                    return self._end(str(stop))
            self._emit_metrics(trainer.step, metrics)
            if self._save.is_set() or (run.save_every and trainer.step % run.save_every == 0):
                self._checkpoint()
        self._end("" if self._stop.is_set() else None)

    def _end(self, during: str | None) -> None:
        """End the run: a final checkpoint (once) and a `finished` or `stopped` event (`during`: what a stop cut
        short, "" when it came between steps; None when the run finished)."""
        self._save.clear()
        if self.trainer is not None and self._saved_step != self.trainer.step:
            self._checkpoint()
        self._report(self.health.finish())
        finished = not during and self.trainer is not None and self.trainer.step >= self.cfg.run.steps
        self._status = "finished" if finished else "stopped"
        extra = {"during": during} if during else {}
        if self.trainer is None:
            extra["note"] = "stopped before the model was ready: nothing was trained, so no checkpoint"
        self.records.emit_event(self._status, step=self.trainer.step if self.trainer else self.step, **extra)

    def _crashed(self, exc: Exception) -> None:
        """Record a crash; a storage failure is explained in one line, without a traceback."""
        tail = "" if isinstance(exc, StorageError) else "\n\n" + "".join(traceback.format_exc().splitlines(True)[-12:])
        self.error = f"{type(exc).__name__}: {exc}{tail}"
        self._status = "crashed"
        try:
            self.records.emit_event("error", step=self.step, message=str(exc), traceback=traceback.format_exc())
        except StorageError:  # the disk that failed the run cannot take its error record either
            pass

    def _report(self, findings: list[HealthEvent]) -> None:
        for finding in findings:
            self.records.emit_event("health", **finding.fields())

    def health_events(self) -> list[dict]:
        """The `health` events this run has emitted, oldest first."""
        return health_events(self.records.events())

    def _wait_while_paused(self) -> None:
        self._status = "paused"
        self.records.emit_event("pause", step=self.step)
        while self._pause.is_set() and not self._stop.is_set():
            if self._save.is_set():
                self._checkpoint()
            self._serve_calls()
            time.sleep(0.05)
        self._status = "running"
        self.records.emit_event("resume", step=self.step)

    def _checkpoint(self) -> None:
        self._save.clear()
        path = save_checkpoint(self.trainer, self.run_dir)
        self._saved_step = self.trainer.step
        self.records.emit_event("checkpoint", step=self.trainer.step, path=str(path))
