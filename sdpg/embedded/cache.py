"""The warm-started embedded model on disk, built once per settings.

Design choices:
- Entries live under `$SDPG_CACHE` (default `~/.cache/sdpg-lab`), keyed by a hash of everything that
  shapes the model, so changing a setting builds a new entry instead of reusing a stale one.
- An entry is built in a temporary folder and renamed into place, so a crash never leaves a half-written
  entry behind; a file lock lets one process build while the others wait.
- The project ships each task's default entry (`SHIPPED_DIR/<task>`, rebuilt by `python -m sdpg.embedded.ship`);
  it is used before the cache only while the key it records equals the current settings' key, so a changed
  recipe falls back to the cache and the warm start instead of loading stale weights.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from sdpg.config import DataConfig
from sdpg.embedded.tokenizer import CHARS, CHAT_TEMPLATE
from sdpg.embedded.warmstart import WarmStartConfig, warm_start
from sdpg.tasks import CONTEXTS, get_task

WARMSTART_FILE = "warmstart.json"
SHIPPED_DIR = Path(__file__).parent / "shipped"
"""the warm-started entries that ship with the project, one folder per task"""


def default_cache_dir() -> Path:
    """`$SDPG_CACHE`, else `~/.cache/sdpg-lab`."""
    return Path(os.environ.get("SDPG_CACHE") or Path.home() / ".cache" / "sdpg-lab")


def embedded_entry(*, cache_dir: str | Path | None = None, warm_cfg: WarmStartConfig | None = None,
                   progress: bool = True, on_warmstart: Callable[[dict], None] | None = None,
                   shipped: bool = True) -> Path:
    """The folder of the embedded model for `warm_cfg`: the shipped entry when it matches (with `shipped`),
    else the cache entry, warm-starting and saving it if absent.

    The folder holds the model, the tokenizer and `warmstart.json` (settings, held-out pass rates,
    wall time). `on_warmstart` gets the warm start's progress dicts (`warm_start`'s `on_step`), or one
    `{"cached": True, ...}` dict when the entry was already there; with `progress` a cached start prints one line.
    """
    warm_cfg = warm_cfg or WarmStartConfig()
    if shipped and (ready := shipped_entry(warm_cfg)) is not None:
        _report_cached(ready, progress, on_warmstart)
        return ready
    entry = Path(cache_dir or default_cache_dir()) / f"embedded-{embedded_key(warm_cfg)}"
    if not (entry / WARMSTART_FILE).is_file():
        entry.parent.mkdir(parents=True, exist_ok=True)
        # One builder per entry: a second process (the dashboard and a notebook started together) waits for
        # the first instead of spending the same minutes; the OS drops the lock if the builder dies.
        with open(entry.parent / f".{entry.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (entry / WARMSTART_FILE).is_file():
                _build_entry(entry, warm_cfg, progress, on_warmstart)
                return entry
    _report_cached(entry, progress, on_warmstart)
    return entry


def _report_cached(entry: Path, progress: bool, on_warmstart: Callable[[dict], None] | None) -> None:
    report = read_warmstart_report(entry)
    cached = {"cached": True, "path": str(entry), "steps": report.get("train/steps"),
              "student_pass@1": report.get("eval/student_pass@1"), "teacher_pass@1": report.get("eval/teacher_pass@1")}
    if progress:
        print(f"embedded model: cached warm start ({cached['steps']} steps, student pass@1 "
              f"{cached['student_pass@1']}, teacher {cached['teacher_pass@1']}) from {entry}")
    if on_warmstart is not None:
        on_warmstart(cached)


def shipped_entry(warm_cfg: WarmStartConfig) -> Path | None:
    """The shipped entry of `warm_cfg`'s task when it was built from exactly these settings, else None."""
    entry = SHIPPED_DIR / warm_cfg.task
    if not (entry / WARMSTART_FILE).is_file():
        return None
    return entry if read_warmstart_report(entry).get("key") == embedded_key(warm_cfg) else None


def embedded_key(warm_cfg: WarmStartConfig) -> str:
    """Hash of everything that shapes the embedded model: warm-start settings (model shape, task, digits
    and seed included), the tokenizer's characters and template, and the task's text format."""
    task = get_task(warm_cfg.task, warm_cfg.digits)
    sample = task.problems(1, seed=0, split="val")[0]
    settings = dataclasses.asdict(warm_cfg)
    del settings["task"]
    fingerprint = {
        "warm_start": settings,
        "chars": CHARS,
        "chat_template": CHAT_TEMPLATE,
        "sample": [sample.question + CONTEXTS["full"](sample), sample.answer],
    }
    if task.name != "add":  # entries made before there were other tasks keep their key
        fingerprint["task"] = {"name": task.name, "response": sample.response, "contexts": task.warm_contexts}
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_warmstart_report(entry: str | Path) -> dict:
    """The `warmstart.json` record of an embedded cache entry."""
    return json.loads((Path(entry) / WARMSTART_FILE).read_text())


def embedded_settings(warm_cfg: WarmStartConfig | None, data_cfg: DataConfig | None) -> WarmStartConfig:
    """The warm-start settings for a run: `warm_cfg` (when None: the defaults with the task's own warm-start
    settings) with the task and digits of `data_cfg` when given."""
    name = data_cfg.task if data_cfg is not None else (warm_cfg.task if warm_cfg else "add")
    warm_cfg = warm_cfg or WarmStartConfig(**get_task(name).warm_start)
    if data_cfg is not None:
        warm_cfg = dataclasses.replace(warm_cfg, task=data_cfg.task, digits=tuple(data_cfg.digits))
    return warm_cfg


def _build_entry(entry: Path, warm_cfg: WarmStartConfig, progress: bool,
                 on_warmstart: Callable[[dict], None] | None = None) -> None:
    for stale in entry.parent.glob(f".{entry.name}-*"):  # staging left by a builder that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        model, tokenizer, report = warm_start(warm_cfg, progress=progress, on_step=on_warmstart)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Written last: its presence marks a complete entry.
        (staging / WARMSTART_FILE).write_text(json.dumps(report, indent=2))
        try:
            staging.rename(entry)
        except OSError:
            # Another process finished the same entry first; it is equally valid, keep it.
            if not (entry / WARMSTART_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

