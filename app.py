"""SDPG Lab dashboard: a Gradio page that starts, steers and watches a training run, or replays one.

Run `python app.py` and open http://127.0.0.1:7860 (`--host`, `--port`, `--share`, `--replay RUN_DIR`,
`--autostart`, `--runs-root DIR`, `--allow-root DIR`, `--config CONFIG_JSON`).

Design choices:
- One `Controller` per app holds the run handle (and any replay being browsed) at app level, never in
  per-session state, so a page reload or a second tab shows the same run. What is shown (version, status
  card, browsable steps, picked group) is `lab.viewmodel`'s, shared with the notebook widget.
- Training runs in the handle's background thread. A `gr.Timer` polls the record stream every
  1.5 s; each session remembers the version of the records it last drew (`gr.State`), and a tick with
  nothing new returns `gr.skip()` for every output, so an idle page costs almost nothing. What a new
  version shows is built once and shared by every viewer (`SharedViews`), so a classroom costs one build
  per change, not one per viewer; curves carry at most `lab.curves.MAX_POINTS` steps, and replayed record
  files are limited to `MAX_RECORD_BYTES`. The page draws each view once with no records while it starts
  (`warm_views`), so plotly's one-time setup (~0.6 s on 2 cores) is not paid by the first viewer's first refresh.
- Pictures come from `lab/`; this file builds a config from the controls, calls the handle, and
  routes records to views. It holds no math.
- Bad settings are refused before anything starts: `check_config` plus a check that named
  data files and local model folders exist; the message shows on the page.
- Paths typed into the page (replay, compare and run directories, data files, model folders) must lie under
  the runs root or a folder given with `--allow-root`; every one goes through `Controller.confine`, which runs
  before the path is touched, so a refusal says nothing about whether the path exists.
- SIGTERM is handled like Ctrl-C: the server closes, the live run saves a final checkpoint and records
  `stopped`, then the process exits.
- Which run button works in which status is the engine's table (`sdpg.run.ACTIONS`); a button press the
  status does not allow is refused with a message, the same rule that greys the button out.
- Health events of the shown run appear as a banner under the status card.
- Gradio 6 takes theme and CSS at launch, so `serve()` is the one launcher for the CLI and tests.
- Without `--config` the page starts from the demo task `DEMO_TASK` with the tuned comparison's recipe (`DEMO_LR`,
  `DEMO_MINI_BATCH`): the task and rate at which the tuned GRPO learns (docs/results.md), so the teacher's signal
  is shown where the baseline learns too; the Task control switches to any other.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections import OrderedDict
from functools import cache, partial
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import plotly.graph_objects as go  # noqa: E402
from gradio.components.plot import PlotData  # noqa: E402
import numpy as np  # noqa: E402

from lab import (COLOR_MODES, advantage_evolution, advantage_histogram, curves_figure, empty_figure,  # noqa: E402
                 message_html, rollout_html, token_heatmap, topk_figure, whatif_figure)
from sdpg.published import first_look, is_published, load_published, published_choices  # noqa: E402
from lab.overlay import config_diff_html, overlay_figure, summary_table_html  # noqa: E402
from lab.heatmap import (WINDOW, overview_image, overview_position, response_length, token_values,  # noqa: E402
                         window_around, window_start)
from lab.playground import (PROBE_FIELDS, gap_table_html, logq_figure, probe_summary_html, topk_html,  # noqa: E402
                            variant_heatmap)
from pages.explore import explore_tabs, wire_explore  # noqa: E402
from pages.export import export_tab, wire_export  # noqa: E402
from pages.race import RaceController, race_tab, wire_race  # noqa: E402
from lab.viewmodel import (RunView, browsable_steps, follow_step, group_ids, metrics_row, pick_group,  # noqa: E402
                           shift_step)
from sdpg.checkpoint import latest_checkpoint  # noqa: E402
from sdpg.config import TrainConfig  # noqa: E402
from sdpg.data import PromptRow  # noqa: E402
from sdpg.losses import REF_MODES  # noqa: E402
from sdpg.methods import METHODS, check_config  # noqa: E402
from sdpg.playground import (Subject, check_gap_counts, check_gap_request, context_gap,  # noqa: E402
                             context_variants, load_subject, probe_response, recorded_response_ids)
from sdpg.records import DEFAULT_CACHE_MB, EVENTS_FILE, METRICS_FILE, RecordStream  # noqa: E402
from sdpg.reward import MathVerifier  # noqa: E402
from sdpg.run import ACTIONS, RunHandle, default_run_dir, load_data, sigterm_as_ctrl_c  # noqa: E402
from sdpg.runs import find_runs, load_run, newest_runs  # noqa: E402
from sdpg.stopping import Stopped, stop_scope  # noqa: E402
from sdpg.tasks.addition import make_row  # noqa: E402
from sdpg.tasks import TASKS  # noqa: E402
from sdpg.whatif import token_weights  # noqa: E402

REFRESH_S = 1.5
MAX_PATH_CHARS = 1024
"""longest path the page accepts (Linux allows 4096, but no run or data path needs more than this)"""
NAME_MAX_BYTES = 255
"""longest file or folder name (Linux's NAME_MAX)"""
HEADER = """
<div class="sdpg-header">
  <div class="sdpg-title">SDPG Lab <span>Self-Distilled Policy Gradient, live</span></div>
  <div class="sdpg-tagline">One model, two roles: the <b class="stu">student</b> answers from the prompt alone, the
  <b class="tea">teacher</b> &mdash; the same weights, no gradient &mdash; also sees a privileged hint; training adds a
  gated, full-vocabulary <b>KL(student&nbsp;&#8214;&nbsp;teacher)</b> on every token to the outcome-reward policy gradient.</div>
</div>
"""
CSS = """
.gradio-container {max-width: 1680px !important; font-size: 14px}
.sdpg-header {padding: 14px 18px; border-radius: 12px;
  background: linear-gradient(100deg, #4a1670 0%, #8e44ad 55%, #f08c2e 130%)}
.sdpg-header, .sdpg-header * {color: #fff !important}
.sdpg-title {font-size: 24px; font-weight: 800; letter-spacing: .01em}
.sdpg-title span {font-size: 14px; font-weight: 500; opacity: .85; margin-left: 10px}
.sdpg-tagline {margin-top: 4px; font-size: 14px; line-height: 1.45; opacity: .95}
.sdpg-header .stu {color: #bfd7ff !important} .sdpg-header .tea {color: #ffd8a8 !important}
"""
THEME = gr.themes.Soft(primary_hue="purple", secondary_hue="orange", neutral_hue="slate",
                       font=["Inter", "Segoe UI", "Helvetica Neue", "Arial", "sans-serif"],
                       font_mono=["JetBrains Mono", "DejaVu Sans Mono", "monospace"])


class Controller(RunView):
    """App-level state: the page's view of at most one live run (plus a replay), and the controls that steer it."""

    def __init__(self, runs_root: str | Path = "runs", run_factory=RunHandle, allowed_roots=(),
                 record_cache_mb: float = DEFAULT_CACHE_MB):
        super().__init__()
        self.runs_root = Path(runs_root)
        self.record_cache_mb = record_cache_mb
        """MiB of a replay's per-token records kept in memory (`--record-cache-mb`)"""
        self.allowed_roots = [Path(r).expanduser().resolve() for r in (self.runs_root, *allowed_roots)]
        """folders the page may read or write under: the runs root and each `--allow-root`"""
        self.run_factory = run_factory
        self.races = None
        """the page's `pages.race.RaceController`, set when the page is built"""
        self._lock = threading.Lock()
        self.closing = threading.Event()
        """set when the server shuts down: playground questions on a replay's checkpoint stop"""

    def status_card(self) -> str:
        card = super().status_card() + replay_problems(self.replay)
        return self.races.top_card(card) if self.races is not None else card

    def version(self) -> tuple:
        return super().version() + (self.races.top_version() if self.races is not None else ())

    # ---- controls: each allowed only in the statuses `sdpg.run.ACTIONS` names ----
    def refusal(self, action: str) -> tuple[str, str] | None:
        """The message refusing `action` in the live run's status, or None when it is allowed."""
        status = self.live_status()
        if action in ACTIONS[status]:
            return None
        where = f" ({self.handle.run_dir})" if self.handle is not None else ""
        allowed = ", ".join(ACTIONS[status]) or "nothing until it has stopped"
        return f"Cannot {action} now: the run{where} is {status} (allowed: {allowed}).", "error"

    def start(self, cfg: TrainConfig) -> tuple[str, str]:
        with self._lock:
            if refused := self.refusal("start"):
                return refused
            if not cfg.run.run_dir:
                cfg.run.run_dir = str(fresh_run_dir(self.runs_root, cfg))
            handle = self.run_factory(cfg)
            handle.start()
            self.handle, self.replay = handle, None
        return f"Started {cfg.loss.method.upper()} for {cfg.run.steps} steps → {handle.run_dir}", "ok"

    def pause(self) -> tuple[str, str]:
        if refused := self.refusal("pause"):
            return refused
        self.handle.pause()
        return "Pause requested: the run pauses after the current step.", "info"

    def resume(self) -> tuple[str, str]:
        if refused := self.refusal("resume"):
            return refused
        self.handle.resume()
        return "Resumed.", "ok"

    def stop(self) -> tuple[str, str]:
        if refused := self.refusal("stop"):
            return refused
        self.handle.stop(wait=False)
        return ("Stop requested: the run ends within seconds (a step cut short is discarded) and saves a checkpoint of "
                "its last completed step."), "info"

    def checkpoint(self) -> tuple[str, str]:
        if refused := self.refusal("checkpoint"):
            return refused
        self.handle.request_checkpoint()
        return "Checkpoint requested: it is saved after the current step.", "info"

    def confine(self, text: str, what: str) -> Path:
        """The one gate for every path the page is given (replay, compare, data, model): see `confine`."""
        return confine(text, self.allowed_roots, what)

    def open_replay(self, run_dir: str) -> tuple[str, str]:
        text = (run_dir or "").strip()
        if not text or text == ".":
            return "Choose or type a run directory first.", "error"
        try:
            path = self.confine(text, "run directory")
            check_record_sizes(path)
            self.replay = RecordStream.open(path, cache_mb=self.record_cache_mb)
        except (OSError, ValueError) as err:
            return str(err), "error"
        bad = self.replay.bad_lines
        note = f" Skipped {self.replay.bad_line_count} bad record line(s); first: {bad[0]}" if bad else ""
        return f"Opened {text} for browsing.{note}", "ok"

    def close_replay(self) -> tuple[str, str]:
        self.replay = None
        return ("Showing the live run." if self.handle else "Closed the replay; no live run."), "info"


def confine(text: str, roots: list[Path], what: str) -> Path:
    """`text` as a resolved path if it lies under one of `roots`; ValueError otherwise.

    Length and characters are checked before the file system is asked anything, and a path outside the
    roots gets the same answer whether or not it exists.
    """
    check_path_text(text, what)
    path = Path(text).expanduser().resolve()
    if not any(path.is_relative_to(root) for root in roots):
        raise ValueError(f"{what} {text[:200]!r} is outside the folders this page may use "
                         f"({', '.join(map(str, roots))}); start the app with --allow-root to add one")
    return path


def check_path_text(text: str, what: str) -> None:
    """ValueError for a path no file system call should see: too long, a too-long name in it, a NUL byte."""
    if "\0" in text:
        raise ValueError(f"{what}: the path holds a NUL character")
    if len(text) > MAX_PATH_CHARS:
        raise ValueError(f"{what}: the path is {len(text)} characters long; the page accepts at most {MAX_PATH_CHARS}")
    if any(len(part.encode()) > NAME_MAX_BYTES for part in Path(text).parts):
        raise ValueError(f"{what}: a folder or file name in the path is longer than {NAME_MAX_BYTES} bytes")


def confine_settings(cfg: TrainConfig, confine_path) -> None:
    """Refuse data files and local model folders that `confine_path` (`Controller.confine`) refuses, before
    anything checks that they exist."""
    for name, spec in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if spec != "embedded":
            confine_path(spec, f"config {name}")
    name = cfg.model.name
    if name == "embedded":
        return
    check_path_text(name, "config model.name")
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name) or Path(name).is_dir():
        confine_path(name, "config model.name")  # a path, not a hub id: it would be read from disk


MAX_RECORD_BYTES = 64 * 2**20
"""largest metrics or events file the page replays or compares (a 10,000-step run writes about 30 MB of metrics);
its rows are parsed into memory and drawn on every change"""


def check_record_sizes(run_dir: Path) -> None:
    """ValueError naming the file when a run's metrics or events file is larger than the page reads."""
    for name in (METRICS_FILE, EVENTS_FILE):
        path = run_dir / name
        size = path.stat().st_size if path.is_file() else 0
        if size > MAX_RECORD_BYTES:
            raise ValueError(f"{path} is {size / 2**20:.0f} MiB; the page replays and compares record files of at "
                             f"most {MAX_RECORD_BYTES // 2**20} MiB (open it in a notebook with RecordStream.open)")


def replay_problems(replay: RecordStream | None) -> str:
    """A line under the status card when the replayed files had lines that were skipped."""
    if replay is None or not replay.bad_line_count:
        return ""
    return message_html(f"{replay.bad_line_count} bad record line(s) skipped; first: {replay.bad_lines[0]}", "error")


def fresh_run_dir(runs_root: Path, cfg: TrainConfig) -> Path:
    """runs_root/<the engine's default name>, with a suffix if a run of that name exists already."""
    base = runs_root / default_run_dir(cfg).name
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def list_runs(runs_root: str | Path) -> list[str]:
    """Run directories directly under `runs_root`, newest first (the Replay tab's choices)."""
    return [str(p) for p in newest_runs(runs_root)]


def config_from_controls(base: TrainConfig, *, method, beta, alpha, ref_mode, gate, beta_warmup, beta_decay, lr,
                         group_size, temperature, steps, model, data, val, task=None,
                         confine_path=None) -> TrainConfig:
    """A validated copy of `base` with the page's settings; ValueError names the first bad one.

    With `confine_path` (`Controller.confine`), data files and model folders must pass it."""
    numbers = {"β": beta, "α": alpha, "β warmup": beta_warmup, "β decay": beta_decay, "learning rate": lr,
               "group size": group_size, "temperature": temperature, "steps": steps}
    empty = [name for name, v in numbers.items() if v is None]
    if empty:
        raise ValueError(f"{', '.join(empty)}: no value given")
    cfg = TrainConfig.from_dict(base.to_dict())
    cfg.run.run_dir = ""
    cfg.loss.method, cfg.loss.ref_mode, cfg.loss.gate = method, ref_mode, bool(gate)
    cfg.loss.beta, cfg.loss.alpha = float(beta), float(alpha)
    cfg.loss.beta_warmup = _whole("loss.beta_warmup", beta_warmup)
    cfg.loss.beta_decay = _whole("loss.beta_decay", beta_decay)
    cfg.optim.lr, cfg.rollout.temperature = float(lr), float(temperature)
    cfg.rollout.group_size, cfg.run.steps = _whole("rollout.group_size", group_size), _whole("run.steps", steps)
    cfg.model.name = (model or "").strip() or "embedded"
    cfg.data.train, cfg.data.val = (data or "").strip() or "embedded", (val or "").strip() or "embedded"
    if task and task != cfg.data.task:  # another task: its own rollout length when the base one is too short
        cfg.data.task = task
        if cfg.data.train == "embedded" and task in TASKS and cfg.rollout.max_new_tokens < TASKS[task].response_tokens:
            cfg.rollout.max_new_tokens = TASKS[task].max_new_tokens
    if confine_path is not None:
        confine_settings(cfg, confine_path)
    for name, spec in (("data.train", cfg.data.train), ("data.val", cfg.data.val)):
        if spec != "embedded" and not Path(spec).expanduser().is_file():
            raise ValueError(f"config {name}={spec!r} is invalid: no such file (use 'embedded' or a .parquet/.jsonl path)")
    name = cfg.model.name
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(f"config model.name={name!r} is invalid: no such directory (expected a save_pretrained folder)")
    return check_config(cfg)


def _whole(name: str, value) -> int:
    """A count from a page number box; inf or NaN (which int() cannot take) is refused like any bad value."""
    if not math.isfinite(float(value)):
        raise ValueError(f"config {name}={value!r} is invalid: must be a finite whole number (set by --{name})")
    return int(value)


# ---------------- record selection (which step / group / response the views show) ----------------
def whatif_view(stream: RecordStream | None, group: dict | None, response, start=0):
    """What-if weights of one recorded response, from the engine's `token_weights`, over the heatmap's token
    window when the response is longer than it."""
    responses, i = (group or {}).get("responses", []), int(response or 0)
    if not 0 <= i < len(responses):
        return empty_figure("no response recorded for this step and group", title="What-if token weights")
    try:
        weights = token_weights(responses[i], stream.config())
    except KeyError as err:  # records written without the per-token arrays the weights need
        return empty_figure(f"this response's record has no {err} array", title="What-if token weights")
    tokens = responses[i]["tokens"]
    lo = window_start(len(tokens), start)
    hi = min(len(tokens), lo + WINDOW)
    span = f", tokens {lo}–{hi - 1} of {len(tokens)}" if hi - lo < len(tokens) else ""
    return whatif_figure({m: list(w[lo:hi]) for m, w in weights.items()}, list(tokens[lo:hi]),
                         label=f"step {group.get('step')}, group {group.get('group')}, response #{i}{span}")


def selection_controls(stream: RecordStream | None, step, group) -> tuple:
    """Updates for the group dropdown and the ranges shown under the response / position inputs.

    The inputs are unbounded numbers on purpose: Gradio validates a slider against its initial maximum,
    not an updated one, and the views already answer an out-of-range index with a message.
    """
    ids = group_ids(stream, step)
    g = pick_group(stream, step, group)
    n_resp = len(g["responses"]) if g else 1
    longest = max((len(r.get("tokens", [])) for r in g["responses"]), default=1) if g else 1
    return (gr.update(choices=ids, value=g["group"] if g else None),
            gr.update(info=f"0 … {n_resp - 1}"), gr.update(info=f"0 … {longest - 1}"),
            gr.update(info=f"0 … {n_resp - 1}"))


def selection_views(stream, step, group, color_by, response, position, wresponse, start=0) -> tuple:
    """Heatmap (the token window from `start`), histogram, rollout card, top-k and what-if for one step and group."""
    g = pick_group(stream, step, group)
    return (token_heatmap(g, color_by, start=int(start or 0)), advantage_histogram(metrics_row(stream, step)),
            rollout_html(g), topk_figure(g, int(response or 0), int(position or 0)),
            whatif_view(stream, g, wresponse, int(start or 0)))


def overview_view(stream, step, group, color_by, start):
    """The whole-response overview strip of the shown group (an image the user clicks to move the window)."""
    return overview_image(pick_group(stream, step, group), color_by, start=int(start or 0))


RUN_BUTTONS = ("start", "pause", "resume", "stop", "checkpoint")
"""the run buttons, each named after the action (`sdpg.run.ACTIONS`) it asks for"""


def button_states(status: str) -> tuple:
    """One update per `RUN_BUTTONS` button: usable exactly when the status allows its action."""
    return tuple(gr.update(interactive=action in ACTIONS[status]) for action in RUN_BUTTONS)


# ---------------- the page ----------------
CONTROL_NAMES = ("method", "beta", "alpha", "ref_mode", "gate", "beta_warmup", "beta_decay", "lr", "group_size",
                 "temperature", "steps", "model", "data", "val", "task")
DEMO_TASK = "add"
"""the page's default embedded task: in the tuned comparison (docs/results.md) the task where the tuned GRPO learns, so
the teacher's signal is shown at a rate where the baseline learns too"""
DEMO_WHY = ("the task where, at the tuned learning rate, GRPO and every distilling method learn within 40 steps "
            "(docs/results.md), so the teacher's per-token signal is shown where the baseline learns too")
"""why `DEMO_TASK`, as the page says it"""
DEMO_LR = 3e-5
"""the page's learning rate: the tuned GRPO's on the demo task (docs/results.md, 4 updates a step); on fresh seeds its
held-out pass@1 rose by +0.149 [+0.136, +0.163] in 40 steps"""
DEMO_MINI_BATCH = 4
"""prompt groups per optimizer update on the page (4 updates a step), the recipe that comparison tuned"""


DEMO_VAL = 64
"""held-out problems the page's runs evaluate on (the CLI's 256 made the step-0 evaluation, not the shipped model's
loading, the wait before the first training step)"""


def demo_config() -> TrainConfig:
    """The page's default settings: the CLI's defaults on the demo task at the tuned recipe (`DEMO_LR`,
    `DEMO_MINI_BATCH`), with room for its answers and a smaller held-out set (`DEMO_VAL`) so the first step comes
    soon."""
    cfg = TrainConfig()
    cfg.data.task, cfg.data.n_val = DEMO_TASK, DEMO_VAL
    cfg.optim.lr, cfg.optim.mini_batch_prompts = DEMO_LR, DEMO_MINI_BATCH
    cfg.rollout.max_new_tokens = max(cfg.rollout.max_new_tokens, TASKS[DEMO_TASK].max_new_tokens)
    return cfg.validate()


def settings_panel(base: TrainConfig) -> SimpleNamespace:
    """The left column: run settings seeded from `base`, the run buttons and the message line."""
    ui = SimpleNamespace()
    gr.Markdown("### Run settings")
    ui.method = gr.Dropdown(list(METHODS), value=base.loss.method, label="Method", info=METHODS[base.loss.method].description,
                            elem_id="sdpg-method")
    with gr.Row():
        ui.beta = gr.Number(base.loss.beta, label="β (distill KL)", min_width=120, elem_id="sdpg-beta")
        ui.alpha = gr.Number(base.loss.alpha, label="α (ref anchor)", min_width=120, elem_id="sdpg-alpha")
    with gr.Row():
        ui.ref_mode = gr.Dropdown(list(REF_MODES), value=base.loss.ref_mode, label="Ref-KL mode", min_width=120,
                                  elem_id="sdpg-ref-mode")
        ui.gate = gr.Checkbox(base.loss.gate, label="Gate distillation on A > 0", min_width=120, elem_id="sdpg-gate")
    with gr.Row():
        ui.beta_warmup = gr.Number(base.loss.beta_warmup, label="β warmup steps", precision=0, min_width=120,
                                   elem_id="sdpg-beta-warmup")
        ui.beta_decay = gr.Number(base.loss.beta_decay, label="β decay steps", precision=0, min_width=120,
                                  elem_id="sdpg-beta-decay")
    with gr.Row():
        ui.lr = gr.Number(base.optim.lr, label="Learning rate", min_width=120, elem_id="sdpg-lr")
        ui.temperature = gr.Number(base.rollout.temperature, label="Temperature", min_width=120, elem_id="sdpg-temperature")
    with gr.Row():
        ui.group_size = gr.Number(base.rollout.group_size, label="Group size G", precision=0, min_width=120,
                                  elem_id="sdpg-group-size")
        ui.steps = gr.Number(base.run.steps, label="Steps", precision=0, min_width=120, elem_id="sdpg-steps")
    with gr.Accordion("Model & data", open=False):
        ui.model = gr.Textbox(base.model.name, label="Model", info="'embedded', an HF id, or a local folder",
                              elem_id="sdpg-model")
        ui.data = gr.Textbox(base.data.train, label="Training data", info="'embedded' or a .parquet/.jsonl file",
                             elem_id="sdpg-data")
        ui.val = gr.Textbox(base.data.val, label="Held-out data", info="'embedded' or a file in the same layout",
                            elem_id="sdpg-val")
        ui.task = gr.Dropdown(sorted(TASKS), value=base.data.task, label="Embedded task",
                              info=f"for 'embedded' data (docs/tasks.md); the demo task is {DEMO_TASK}: {DEMO_WHY}",
                              elem_id="sdpg-task")
    ui.start = gr.Button("▶ Start", variant="primary", elem_id="sdpg-start")
    with gr.Row():
        ui.pause = gr.Button("❚❚ Pause", size="sm", elem_id="sdpg-pause")
        ui.resume = gr.Button("▶ Resume", size="sm", elem_id="sdpg-resume")
    with gr.Row():
        ui.stop = gr.Button("■ Stop", variant="stop", size="sm", elem_id="sdpg-stop")
        ui.checkpoint = gr.Button("Save checkpoint", size="sm", elem_id="sdpg-checkpoint")
    ui.message = gr.HTML(elem_id="sdpg-message")
    return ui


def views_panel(ctl: Controller) -> SimpleNamespace:
    """The right column: status card, step / group selection, and one tab per view."""
    ui = SimpleNamespace()
    ui.status = gr.HTML(ctl.status_card(), elem_id="sdpg-status")
    with gr.Row(equal_height=True):
        ui.prev = gr.Button("◀", size="sm", min_width=40, scale=0, elem_id="sdpg-step-prev")
        ui.step = gr.Dropdown([], label="Rollout step", scale=2, elem_id="sdpg-step")
        ui.next = gr.Button("▶", size="sm", min_width=40, scale=0, elem_id="sdpg-step-next")
        ui.group = gr.Dropdown([], label="Group", scale=1, elem_id="sdpg-group")
        ui.follow = gr.Checkbox(True, label="Follow latest step", scale=1, elem_id="sdpg-follow")
    with gr.Tabs():
        with gr.Tab("Training curves"):
            ui.curves = gr.Plot(show_label=False, elem_id="sdpg-curves")
        with gr.Tab("Race"):
            ui.race_ctl = ctl.races = RaceController(ctl)
            ui.race = race_tab(ui.race_ctl)
        with gr.Tab("Token KL"):
            ui.color_by = gr.Radio([(label, key) for key, label in COLOR_MODES.items()], value="kl", label="Colour cells by",
                                   elem_id="sdpg-color-by")
            token_window_row(ui)
            ui.heatmap = gr.Plot(show_label=False, elem_id="sdpg-heatmap")
        with gr.Tab("Advantages"):
            with gr.Row():
                ui.hist = gr.Plot(show_label=False, elem_id="sdpg-adv-hist")
                ui.evolution = gr.Plot(show_label=False, elem_id="sdpg-adv-evolution")
        with gr.Tab("Rollouts"):
            ui.rollout = gr.HTML(elem_id="sdpg-rollout")
            with gr.Row():
                ui.resp = gr.Number(0, precision=0, minimum=0, label="Response #", info="0 … 0", elem_id="sdpg-resp")
                ui.pos = gr.Number(0, precision=0, minimum=0, label="Token position", info="0 … 0", elem_id="sdpg-pos")
            ui.topk = gr.Plot(show_label=False, elem_id="sdpg-topk")
        with gr.Tab("What-if weights"):
            gr.Markdown("Per-token weight each method would put on the sampled tokens of the shown "
                        "response (its update is, to first order, `weight × ∇ log p(token)`).")
            ui.wresp = gr.Number(0, precision=0, minimum=0, label="Response #", info="0 … 0", elem_id="sdpg-wresp")
            ui.whatif = gr.Plot(show_label=False, elem_id="sdpg-whatif")
        with gr.Tab("Replay"):
            gr.Markdown("Open a finished, stopped or crashed run to browse all views. The live run keeps training meanwhile.")
            with gr.Row():
                ui.run_pick = gr.Dropdown(list_runs(ctl.runs_root), label="Run directory", allow_custom_value=True, scale=4,
                                          elem_id="sdpg-run-pick")
                ui.list_runs = gr.Button("↻ Refresh list", size="sm", scale=0, min_width=120, elem_id="sdpg-list-runs")
            with gr.Row():
                ui.open = gr.Button("Open run", variant="primary", size="sm", elem_id="sdpg-open")
                ui.show_live = gr.Button("Show live run", size="sm", elem_id="sdpg-show-live")
        with gr.Tab("Playground"):
            ui.pg = playground_tab()
        with gr.Tab("Compare runs"):
            ui.cmp = compare_tab(ctl)
        with gr.Tab("Across steps"):
            ui.explore = explore_tabs(ctl)
        with gr.Tab("Export"):
            ui.export = export_tab()
    return ui


class SharedViews:
    """What a tick sends, computed once per change of the records and shared by every viewer.

    Each session still asks for the version (a cheap tail of the record files); the figures, the status card and
    the step list of a version are built by the first session that asks, serialised once (`PlotData`), and
    handed to the rest, which wait on the lock instead of building them again. Selection views are kept per
    (version, selection) for the last few selections: viewers that follow the latest step share them too.
    A view that cannot be drawn from the records shows its error on the status card instead of failing the tick.
    """

    def __init__(self, ctl: Controller, keep: int = 16):
        self.ctl = ctl
        self.keep = keep
        self._lock = threading.Lock()
        self._common: tuple | None = None
        self._selections: OrderedDict[tuple, list] = OrderedDict()

    def common(self, version) -> tuple[list, list[int]]:
        """(status card, button states, curves, advantage evolution) and the browsable steps of `version`."""
        with self._lock:
            if self._common is None or self._common[0] != version:
                self._common = (version, *self._build_common())
            return _copies(self._common[1]), self._common[2]

    def _build_common(self) -> tuple[list, list[int]]:
        ctl = self.ctl
        stream = ctl.stream()
        try:
            metrics = stream.metrics() if stream is not None else []
            config = stream.config() if stream is not None else {}
            figures = [plot_data(curves_figure(metrics, config)), plot_data(advantage_evolution(metrics))]
            card, choices = ctl.status_card(), browsable_steps(stream)
        except Exception as err:  # noqa: BLE001 - say it on the page once per version, not an error per viewer
            traceback.print_exc()
            figures, choices = [gr.skip(), gr.skip()], []
            card = message_html(f"The records of this run could not be drawn: {type(err).__name__}: {err}", "error")
        return [card, *button_states(ctl.live_status()), *figures], choices

    def selection(self, version, stream, step, group, color, r, p, wr, start) -> list:
        """Selection controls and views (with the token window's overview) of one selection at `version`."""
        key = (version, step, group, color, r, p, wr, start)
        with self._lock:
            if key not in self._selections:
                try:
                    views = [*selection_views(stream, step, group, color, r, p, wr, start),
                             overview_view(stream, step, group, color, start)]
                    views = [plot_data(v) if isinstance(v, go.Figure) else v for v in views]
                    self._selections[key] = [*selection_controls(stream, step, group), *views]
                except Exception:  # noqa: BLE001 - the status card of this version already names what is wrong
                    traceback.print_exc()
                    self._selections[key] = [gr.skip()] * SELECTION_OUTPUTS
                while len(self._selections) > self.keep:
                    self._selections.popitem(last=False)
            self._selections.move_to_end(key)
            return _copies(self._selections[key])


@cache
def warm_views() -> None:
    """Draw the views a tick sends once, with no records: plotly's one-time setup (its validators and the template,
    ~0.6 s on 2 cores) then happens while the page starts instead of in its first viewer's first refresh."""
    curves_figure([], {})
    advantage_evolution([])
    selection_views(None, None, None, "kl", 0, 0, 0)


SELECTION_OUTPUTS = 10
"""selection controls (group, response, position, what-if response) and views (heatmap, histogram, rollout, top-k,
what-if, overview) a tick sends"""


def _copies(values: list) -> list:
    """Fresh update dicts for one viewer (Gradio may change an update dict while sending it)."""
    return [dict(v) if isinstance(v, dict) else v for v in values]


def plot_data(fig: go.Figure) -> PlotData:
    """A figure serialised once, so every viewer it is sent to gets the same JSON without redoing it."""
    return PlotData(type="plotly", plot=fig.to_json())


def wire_views(ctl: Controller, ui: SimpleNamespace, seen: gr.State):
    """The timer refresh; returns the tick with its inputs and outputs so the page load can draw at once too."""
    buttons = [getattr(ui, action) for action in RUN_BUTTONS]
    sel_controls = [ui.group, ui.resp, ui.pos, ui.wresp]
    sel_views = [ui.heatmap, ui.hist, ui.rollout, ui.topk, ui.whatif, ui.overview]
    tick_outputs = [seen, ui.status, *buttons, ui.curves, ui.evolution, ui.step, *sel_controls, *sel_views]
    shared = SharedViews(ctl)

    def tick(last, step, group, follow_on, color, r, p, wr, start):
        version = ctl.version()
        if version == last:
            return [gr.skip()] * len(tick_outputs)
        common, choices = shared.common(version)
        step = follow_step(choices, step, follow_on)
        return [version, *common, gr.update(choices=choices, value=step),
                *shared.selection(version, ctl.stream(), step, group, color, r, p, wr, start)]

    tick_inputs = [seen, ui.step, ui.group, ui.follow, ui.color_by, ui.resp, ui.pos, ui.wresp, ui.win_start]
    gr.Timer(REFRESH_S).tick(tick, tick_inputs, tick_outputs, show_progress="hidden", concurrency_limit=None,
                             api_name="refresh")
    return tick, tick_inputs, tick_outputs


def wire_selection(ctl: Controller, ui: SimpleNamespace) -> None:
    """Redraw the selection views when the user picks a step, group, colour, response or token, steps with ◀ / ▶,
    or turns "follow latest step" back on (which shows the newest step at once)."""
    sel_controls = [ui.group, ui.resp, ui.pos, ui.wresp]
    sel_views = [ui.heatmap, ui.hist, ui.rollout, ui.topk, ui.whatif, ui.overview]
    sel_inputs = [ui.step, ui.group, ui.color_by, ui.resp, ui.pos, ui.wresp, ui.win_start]

    def on_step(step, group, color, r, p, wr, start):
        stream = ctl.stream()
        return [False, *selection_controls(stream, step, group), *selection_views(stream, step, group, color, r, p, wr, start),
                overview_view(stream, step, group, color, start)]

    def step_by(delta):
        def go_to(step, group, color, r, p, wr, start):
            new = shift_step(browsable_steps(ctl.stream()), step, delta)
            if new is None:
                return [gr.skip()] * (2 + len(sel_controls) + len(sel_views))
            return [gr.update(value=new), *on_step(new, group, color, r, p, wr, start)]
        return go_to

    def follow_latest(on, step, group, color, r, p, wr, start):
        newest = follow_step(browsable_steps(ctl.stream()), step, on)
        if not on or newest is None or newest == step:
            return [gr.skip()] * (1 + len(sel_controls) + len(sel_views))
        return [gr.update(value=newest), *on_step(newest, group, color, r, p, wr, start)[1:]]

    for dropdown in (ui.step, ui.group):
        dropdown.input(on_step, sel_inputs, [ui.follow, *sel_controls, *sel_views], show_progress="hidden")
    ui.follow.input(follow_latest, [ui.follow, *sel_inputs], [ui.step, *sel_controls, *sel_views], show_progress="hidden")
    for button, delta in ((ui.prev, -1), (ui.next, +1)):
        button.click(step_by(delta), sel_inputs, [ui.step, ui.follow, *sel_controls, *sel_views], show_progress="hidden")
    ui.color_by.input(lambda s, g, c, w: (token_heatmap(pick_group(ctl.stream(), s, g), c, start=int(w or 0)),
                                          overview_view(ctl.stream(), s, g, c, w)),
                      [ui.step, ui.group, ui.color_by, ui.win_start], [ui.heatmap, ui.overview], show_progress="hidden")
    for index in (ui.resp, ui.pos):
        index.input(lambda s, g, r, p: topk_figure(pick_group(ctl.stream(), s, g), int(r or 0), int(p or 0)),
                    [ui.step, ui.group, ui.resp, ui.pos], ui.topk, show_progress="hidden")
    ui.wresp.input(lambda s, g, w, start: whatif_view(ctl.stream(), pick_group(ctl.stream(), s, g), w, start),
                   [ui.step, ui.group, ui.wresp, ui.win_start], ui.whatif, show_progress="hidden")
    wire_token_window(ctl, ui)


# ---------------- the token window of long responses ----------------
def token_window_row(ui: SimpleNamespace) -> None:
    """The whole-response overview (click to jump) and the buttons that move the heatmap's token window."""
    ui.overview = gr.Image(show_label=False, interactive=False, elem_id="sdpg-heat-overview",
                           buttons=[], container=False)
    with gr.Row(equal_height=True):
        ui.win_first = gr.Button("⏮ start", size="sm", min_width=60, scale=0, elem_id="sdpg-heat-first")
        ui.win_prev = gr.Button("◀ window", size="sm", min_width=80, scale=0, elem_id="sdpg-heat-prev")
        ui.win_start = gr.Number(0, precision=0, minimum=0, label="First token shown", scale=1,
                                 elem_id="sdpg-heat-start")
        ui.win_next = gr.Button("window ▶", size="sm", min_width=80, scale=0, elem_id="sdpg-heat-next")
        ui.win_last = gr.Button("end ⏭", size="sm", min_width=60, scale=0, elem_id="sdpg-heat-last")
        ui.win_peak = gr.Button("Jump to the largest value", size="sm", scale=0, elem_id="sdpg-heat-peak")


def wire_token_window(ctl: Controller, ui: SimpleNamespace) -> None:
    """Moving the window redraws the heatmap, the overview's frame and the what-if weights; a click on the
    overview or the peak button also points the top-5 view at that token."""
    inputs = [ui.step, ui.group, ui.color_by, ui.wresp, ui.win_start]
    views = [ui.win_start, ui.heatmap, ui.overview, ui.whatif]

    def draw(step, group, color, wr, start):
        stream = ctl.stream()
        g = pick_group(stream, step, group)
        start = window_start(response_length(g), start)
        return [start, token_heatmap(g, color, start=start), overview_view(stream, step, group, color, start),
                whatif_view(stream, g, wr, start)]

    def move(where):
        def go(step, group, color, wr, start):
            n = response_length(pick_group(ctl.stream(), step, group))
            target = {"first": 0, "prev": int(start or 0) - WINDOW, "next": int(start or 0) + WINDOW, "last": n}[where]
            return draw(step, group, color, wr, target)
        return go

    def jump_to(step, group, color, wr, r, position):
        g = pick_group(ctl.stream(), step, group)
        start = window_around(response_length(g), position)
        return [*draw(step, group, color, wr, start), r, position, topk_figure(g, r, position)]

    def clicked(step, group, color, wr, r, evt: gr.SelectData):
        n = response_length(pick_group(ctl.stream(), step, group))
        return jump_to(step, group, color, wr, int(evt.index[1]) // 8 if evt.index else int(r or 0),
                       overview_position(int(evt.index[0]), n))

    def peak(step, group, color, wr, r):
        g = pick_group(ctl.stream(), step, group)
        values = [token_values(x, color) for x in (g or {}).get("responses", [])]
        best = max(((i, int(np.nanargmax(np.abs(v)))) for i, v in enumerate(values) if np.isfinite(v).any()),
                   key=lambda ip: abs(values[ip[0]][ip[1]]), default=(int(r or 0), 0))
        return jump_to(step, group, color, wr, *best)

    for button, where in ((ui.win_first, "first"), (ui.win_prev, "prev"), (ui.win_next, "next"), (ui.win_last, "last")):
        button.click(move(where), inputs, views, show_progress="hidden")
    ui.win_start.submit(draw, inputs, views, show_progress="hidden")
    jumps = [*views, ui.resp, ui.pos, ui.topk]
    ui.overview.select(clicked, [*inputs[:4], ui.resp], jumps, show_progress="hidden")
    ui.win_peak.click(peak, [*inputs[:4], ui.resp], jumps, show_progress="hidden")


def wire_controls(ctl: Controller, base: TrainConfig, ui: SimpleNamespace) -> None:
    """Run buttons, replay buttons and the `/status` API, each answering on the message line."""
    def on_start(*values):
        try:
            cfg = config_from_controls(base, **dict(zip(CONTROL_NAMES, values)), confine_path=ctl.confine)
            return message_html(*ctl.start(cfg))
        except (ValueError, OSError) as err:  # OSError: a missing file, a run directory we cannot write
            return message_html(f"Not started: {err}", "error")

    def run_status() -> str:
        return ctl.live_status()

    ui.method.change(lambda m: gr.update(info=METHODS[m].description), ui.method, ui.method, api_visibility="private")
    ui.start.click(on_start, [getattr(ui, name) for name in CONTROL_NAMES], ui.message, api_name="start")
    def reply(action):
        return lambda: message_html(*action())

    for name in RUN_BUTTONS[1:]:
        getattr(ui, name).click(reply(getattr(ctl, name)), None, ui.message, api_name=name)
    ui.list_runs.click(lambda: gr.update(choices=list_runs(ctl.runs_root)), None, ui.run_pick, api_visibility="private")
    ui.open.click(lambda d: message_html(*ctl.open_replay(d)), ui.run_pick, ui.message, api_name="open_replay")
    ui.show_live.click(lambda: message_html(*ctl.close_replay()), None, ui.message, api_name="show_live")
    gr.api(run_status, api_name="status")


def build_app(ctl: Controller | None = None, *, base_config: TrainConfig | None = None, runs_root: str | Path = "runs") -> gr.Blocks:
    """The dashboard page bound to `ctl` (a new one over `runs_root` if None); `base_config` seeds the controls
    and supplies every setting the page does not show."""
    ctl = ctl or Controller(runs_root)
    base = base_config or demo_config()
    warm_views()
    with gr.Blocks(title="SDPG Lab") as demo:
        gr.HTML(HEADER)
        seen = gr.State(None)
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300):
                controls = settings_panel(base)
            with gr.Column(scale=4):
                views = views_panel(ctl)
        ui = SimpleNamespace(**vars(controls), **vars(views))
        tick, tick_inputs, tick_outputs = wire_views(ctl, ui, seen)
        demo.load(tick, tick_inputs, tick_outputs, show_progress="hidden", api_visibility="private")
        wire_selection(ctl, ui)
        wire_controls(ctl, base, ui)
        wire_playground(PlaygroundSource(ctl), ui.pg, ui.step, ui.group)
        compare = wire_compare(ctl, ui.cmp)
        demo.load(compare, ui.cmp.pick, [ui.cmp.message, ui.cmp.curves, ui.cmp.summary, ui.cmp.diff],
                  show_progress="hidden", api_visibility="private")
        wire_explore(ctl, ui.explore)
        wire_export(ctl, ui.export, ui.step, ui.group)
        wire_race(ui.race_ctl, ui.race, [getattr(ui, name) for name in CONTROL_NAMES],
                  lambda *values: config_from_controls(base, **dict(zip(CONTROL_NAMES, values)), confine_path=ctl.confine))
    return demo


# ---------------- the privileged-context playground ----------------
class PlaygroundSource:
    """Where playground questions go: the live run between two of its optimizer steps (its Stop ends a question
    within seconds), or the latest checkpoint of the replay being browsed (loaded once per checkpoint; the
    server's shutdown ends a question)."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self._loaded: dict[Path, Subject] = {}

    def ask(self, fn):
        """`fn(subject, val_rows, verifier)` on the weights the page shows; returns (result, where it ran)."""
        ctl = self.ctl
        if ctl.replay is None and ctl.handle is not None:
            handle = ctl.handle
            return handle.call_between_steps(lambda t: (fn(Subject.from_trainer(t), t.val_rows, t.verifier),
                                                        f"live run {handle.run_dir.name}, weights after step {t.step}"),
                                             timeout=PLAYGROUND_TIMEOUT_S)
        if ctl.replay is None:
            raise ValueError("no run to ask: start one, or open a run with a checkpoint in the Replay tab")
        ckpt = latest_checkpoint(ctl.replay.run_dir)
        if ckpt is None:
            raise ValueError(f"{ctl.replay.run_dir} has no checkpoint to load weights from")
        if ckpt not in self._loaded:
            self._loaded = {ckpt: load_subject(ckpt)}
        subject = self._loaded[ckpt]
        with MathVerifier(timeout_s=subject.cfg.reward.timeout_s) as verifier, stop_scope(ctl.closing):
            return fn(subject, load_data(subject.cfg)[1], verifier), f"checkpoint {ckpt}"


PLAYGROUND_TIMEOUT_S = 300
"""how long a playground question waits for the live run to reach a step boundary"""
EXAMPLE = make_row(358, 47)


def playground_tab() -> SimpleNamespace:
    """The Playground tab's controls and views (wired by `wire_playground`)."""
    ui = SimpleNamespace()
    gr.Markdown("Ask the teacher about one response under different **privileged contexts**: the real hint, no hint, "
                "only the answer, only the worked solution, a wrong answer, your own text, and the student's own prompt "
                "(a sanity check: its KL is exactly 0). Runs on the live run's current weights between two optimizer "
                "steps, or on the latest checkpoint of the run opened in Replay.")
    with gr.Row():
        ui.source = gr.Radio([("recorded response", "recorded"), ("typed", "typed")], value="recorded",
                             label="Response", scale=2, elem_id="sdpg-pg-source")
        ui.step = gr.Number(None, precision=0, label="Recorded step", info="follows the step chosen above", scale=1,
                            elem_id="sdpg-pg-step")
        ui.group = gr.Number(None, precision=0, label="Group", scale=1, elem_id="sdpg-pg-group")
        ui.resp = gr.Number(0, precision=0, minimum=0, label="Response #", scale=1, elem_id="sdpg-pg-resp")
        ui.advantage = gr.Number(1.0, label="Advantage A (typed)", scale=1, elem_id="sdpg-pg-advantage")
    with gr.Row():
        ui.prompt = gr.Textbox(EXAMPLE.prompt, label="Student prompt (typed)", lines=2, elem_id="sdpg-pg-prompt")
        ui.hint = gr.Textbox(EXAMPLE.context, label="Real hint (typed)", lines=2, elem_id="sdpg-pg-hint")
        ui.answer = gr.Textbox(EXAMPLE.answer, label="Gold answer (typed)", elem_id="sdpg-pg-answer")
        ui.response = gr.Textbox("\\boxed{" + EXAMPLE.answer + "}", label="Response (typed)", lines=2,
                                 elem_id="sdpg-pg-response")
    ui.free = gr.Textbox("", label="Free-text context (optional; appended to the student prompt for the teacher)",
                         elem_id="sdpg-pg-free")
    ui.probe = gr.Button("Probe this response", variant="primary", elem_id="sdpg-pg-probe")
    ui.where = gr.Markdown()
    ui.field = gr.Radio([(label, key) for key, label in PROBE_FIELDS.items()], value="kl", label="Colour cells by",
                        elem_id="sdpg-pg-field")
    ui.heatmap = gr.Plot(show_label=False, elem_id="sdpg-pg-heatmap")
    ui.summary = gr.HTML(elem_id="sdpg-pg-summary")
    ui.logq = gr.Plot(show_label=False, elem_id="sdpg-pg-logq")
    ui.position = gr.Number(0, precision=0, minimum=0, label="Top-5 at token position", elem_id="sdpg-pg-position")
    ui.topk = gr.HTML(elem_id="sdpg-pg-topk")
    gr.Markdown("#### Student–self-teacher gap per context\nTeacher pass@1 with each context minus the student's, on "
                "held-out problems, and the mean KL on the student's own responses. Choose privileged information "
                "before spending a training run on it.")
    with gr.Row():
        ui.problems = gr.Number(8, precision=0, minimum=1, label="Problems", elem_id="sdpg-pg-problems")
        ui.samples = gr.Number(4, precision=0, minimum=1, label="Samples per problem (k)", elem_id="sdpg-pg-samples")
        ui.measure = gr.Button("Measure gap", variant="primary", elem_id="sdpg-pg-measure")
    ui.gap = gr.HTML(elem_id="sdpg-pg-gap")
    ui.probe_state = gr.State(None)
    return ui


MAX_TYPED_CHARS = 100_000
"""longest text a playground field takes (the token bounds of `sdpg.playground` then apply)"""


def check_typed_lengths(**fields) -> None:
    """ValueError naming the first playground field longer than MAX_TYPED_CHARS, before anything tokenizes it."""
    for name, text in fields.items():
        if len(text or "") > MAX_TYPED_CHARS:
            raise ValueError(f"the {name} field is {len(text):,} characters; the playground takes at most "
                             f"{MAX_TYPED_CHARS:,}")


def playground_question(ctl: Controller, source, step, group, resp, prompt, hint, answer, response, advantage):
    """The (row, response ids or text, advantage) a probe asks about, or a ValueError saying what is missing."""
    if source == "typed":
        if not (prompt or "").strip() or not (response or "").strip():
            raise ValueError("type a student prompt and a response first")
        return PromptRow(prompt, hint or "", (answer or "").strip()), response, float(advantage or 0.0)
    group_rec = pick_group(ctl.stream(), None if step is None else int(step), None if group is None else int(group))
    responses = (group_rec or {}).get("responses", [])
    i = int(resp or 0)
    if not 0 <= i < len(responses):
        raise ValueError("no recorded response at this step / group / response #: pick one above, or use 'typed'")
    row = PromptRow(group_rec["prompt"], group_rec.get("context", ""), group_rec.get("answer", ""))
    return row, responses[i], float(responses[i]["advantage"])


def wire_playground(src: PlaygroundSource, ui: SimpleNamespace, step, group) -> None:
    """Probe and gap buttons (`/probe`, `/context_gap`), redraws when the colour or position changes, and
    the recorded step / group following the page's selection dropdowns `step`, `group`."""
    def probe(source, step_v, group_v, resp, prompt, hint, answer, response, advantage, free, field, position):
        try:
            check_typed_lengths(prompt=prompt, hint=hint, answer=answer, response=response, free=free)
            row, picked, adv = playground_question(src.ctl, source, step_v, group_v, resp, prompt, hint, answer,
                                                   response, advantage)

            def run(subject, _rows, _verifier):
                ids = recorded_response_ids(subject.tokenizer, picked) if isinstance(picked, dict) else picked
                return probe_response(subject, row.prompt, ids, context_variants(row, free or ""), advantage=adv)
            result, where = src.ask(run)
        except (ValueError, FileNotFoundError, TimeoutError, RuntimeError, Stopped) as err:
            return None, f"**Not probed:** {err}", variant_heatmap(None), probe_summary_html(None), logq_figure(None), ""
        return (result, f"Asked the {where}.", variant_heatmap(result, field), probe_summary_html(result),
                logq_figure(result), topk_html(result, int(position or 0)))

    def gap(problems, samples, free):
        def run(subject, rows, verifier):
            n, k = _whole("problems", problems or 1), _whole("samples", samples or 1)
            check_gap_request(subject, n, k, len(rows))
            return context_gap(subject, rows[:n], verifier, samples=k, free_text=free or "")
        try:
            check_typed_lengths(free=free)
            check_gap_counts(_whole("problems", problems or 1), _whole("samples", samples or 1))
            table, where = src.ask(run)
        except (ValueError, FileNotFoundError, TimeoutError, RuntimeError, Stopped) as err:
            return f"<p><b>Not measured:</b> {err}</p>"
        return gap_table_html(table) + f"<p style='font-size:12px;color:#495057'>Asked the {where}.</p>"

    step.change(lambda v: v, step, ui.step, show_progress="hidden", api_visibility="private")
    group.change(lambda v: v, group, ui.group, show_progress="hidden", api_visibility="private")
    inputs = [ui.source, ui.step, ui.group, ui.resp, ui.prompt, ui.hint, ui.answer, ui.response, ui.advantage, ui.free,
              ui.field, ui.position]
    ui.probe.click(probe, inputs, [ui.probe_state, ui.where, ui.heatmap, ui.summary, ui.logq, ui.topk], api_name="probe")
    ui.measure.click(gap, [ui.problems, ui.samples, ui.free], ui.gap, api_name="context_gap")
    ui.field.input(variant_heatmap, [ui.probe_state, ui.field], ui.heatmap, show_progress="hidden")
    ui.position.input(lambda p, pos: topk_html(p, int(pos or 0)), [ui.probe_state, ui.position], ui.topk,
                      show_progress="hidden")


# ---------------- run comparison ----------------
COMPARE_JSON = Path("docs") / "compare.json"
"""the comparison experiment's results; the run directories it names are offered when they exist"""


def comparable_runs(ctl: Controller) -> list[tuple[str, str]]:
    """(label, value): run directories under the runs root (two levels deep), those the comparison results name that
    the page may open, then the committed comparison results of docs/science (`sdpg.published`)."""
    found = [str(p) for p in find_runs(ctl.runs_root)]
    if COMPARE_JSON.is_file():
        named = [r["run_dir"] for r in json.loads(COMPARE_JSON.read_text()).get("runs", [])]
        found += [d for d in named if d not in found and _allowed(ctl, d) and Path(d).is_dir()]
    return [(d, d) for d in found] + published_choices()


def load_comparable(ctl: Controller, choice: str) -> list[dict]:
    """The run dicts of one choice: every seed of a committed result, or a run directory inside the page's roots."""
    if is_published(choice):
        return load_published(choice)
    path = ctl.confine(str(choice).strip(), "run directory")
    check_record_sizes(path)
    return [load_run(path)]


def _allowed(ctl: Controller, text: str) -> bool:
    try:
        ctl.confine(text, "run directory")
    except ValueError:
        return False
    return True


def compare_tab(ctl: Controller) -> SimpleNamespace:
    """The Compare runs tab: choose runs, see their curves overlaid, a summary table and the config diff."""
    ui = SimpleNamespace()
    gr.Markdown("Choose several runs (under the runs root, the comparison experiment's directories, or the committed "
                "results of docs/science, which a fresh clone shows at once): curves "
                "overlaid on the same panels (colour = method, dash = seed), a summary table, and every setting that differs.")
    with gr.Row():
        ui.pick = gr.Dropdown(comparable_runs(ctl), value=first_look(task=DEMO_TASK), multiselect=True,
                              allow_custom_value=True, label="Runs to compare", scale=5, elem_id="sdpg-cmp-pick")
        ui.refresh = gr.Button("↻ Refresh list", size="sm", scale=0, min_width=120, elem_id="sdpg-cmp-refresh")
        ui.go = gr.Button("Compare", variant="primary", scale=0, min_width=120, elem_id="sdpg-cmp-go")
    ui.message = gr.Markdown()
    ui.curves = gr.Plot(show_label=False, elem_id="sdpg-cmp-curves")
    ui.summary = gr.HTML(elem_id="sdpg-cmp-summary")
    ui.diff = gr.HTML(elem_id="sdpg-cmp-diff")
    return ui


def wire_compare(ctl: Controller, ui: SimpleNamespace):
    """The `/compare` endpoint: chosen run directories in, overlay, summary and config diff out; returns the
    comparison function (the page draws the first look with it on load)."""
    def compare(run_dirs):
        runs, problems = [], []
        for d in run_dirs or []:
            try:
                runs += load_comparable(ctl, d)
            except (FileNotFoundError, ValueError) as err:
                problems.append(str(err))
        note = f"Comparing {len(runs)} runs." + ("" if not problems else " Skipped: " + "; ".join(problems))
        return note, overlay_figure(runs), summary_table_html(runs), config_diff_html(runs)

    ui.refresh.click(lambda: gr.update(choices=comparable_runs(ctl)), None, ui.pick, api_visibility="private")
    ui.go.click(compare, ui.pick, [ui.message, ui.curves, ui.summary, ui.diff], api_name="compare")
    return compare


def serve(demo: gr.Blocks, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True):
    """Launch the page with the ctl's theme and CSS; with block=False return at once (tests)."""
    return demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                       theme=THEME, css=CSS, quiet=not block)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="SDPG Lab dashboard")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--port", type=int, default=7860, help="port to listen on")
    ap.add_argument("--share", action="store_true", help="also serve through a public Gradio share link")
    ap.add_argument("--replay", metavar="RUN_DIR", help="open a recorded run directory for browsing")
    ap.add_argument("--autostart", action="store_true", help="start training with the default settings at once")
    ap.add_argument("--runs-root", default="runs", help="where new runs go and where the Replay tab looks")
    ap.add_argument("--allow-root", action="append", default=[], metavar="DIR",
                    help="another folder whose runs, data files and models the page may open (repeatable)")
    ap.add_argument("--config", metavar="CONFIG_JSON", help="a saved config.json whose settings seed the page")
    ap.add_argument("--record-cache-mb", type=float, metavar="MIB",
                    help=f"MiB of per-token records kept in memory, per run shown (default {DEFAULT_CACHE_MB:g}; "
                         "older steps are read back from disk)")
    args = ap.parse_args(argv)
    try:
        base = TrainConfig.from_dict(json.loads(Path(args.config).read_text())).validate() if args.config else demo_config()
    except (OSError, ValueError, TypeError) as err:  # TypeError: an unknown field in the file
        ap.error(f"--config {args.config}: {err}")
    base.run.run_dir = ""  # every run started here gets a fresh directory under the runs root
    if args.record_cache_mb is not None:
        if not args.record_cache_mb >= 1:
            ap.error(f"--record-cache-mb {args.record_cache_mb:g}: must be at least 1 (MiB)")
        base.run.record_cache_mb = args.record_cache_mb
    replay_root = [Path(args.replay).expanduser().resolve()] if args.replay else []  # the command line is trusted
    ctl = Controller(args.runs_root, allowed_roots=[*args.allow_root, *replay_root],
                     run_factory=partial(RunHandle, progress=True),  # the terminal shows the warm start
                     record_cache_mb=base.run.record_cache_mb)
    if args.replay:
        text, kind = ctl.open_replay(args.replay)
        if kind == "error":
            ap.error(text)
    if args.autostart:
        ctl.start(TrainConfig.from_dict(base.to_dict()))
    signal.signal(signal.SIGTERM, sigterm_as_ctrl_c)  # the server's wait loop closes the server on Ctrl-C
    serve(build_app(ctl, base_config=base), host=args.host, port=args.port, share=args.share)
    shut_down(ctl)


def shut_down(ctl: Controller) -> None:
    """After the server has closed: stop a live run (and a live race) with a final checkpoint and a `stopped` event."""
    ctl.closing.set()
    if ctl.handle is not None and ctl.handle.alive:
        print("stopping the run: saving a checkpoint...", file=sys.stderr)
        ctl.handle.stop(wait=True)
    if ctl.races is not None and ctl.races.race is not None and ctl.races.race.alive:
        print("stopping the race: saving a checkpoint of both runs...", file=sys.stderr)
        ctl.races.race.stop(wait=True)


if __name__ == "__main__":
    main()
