"""Every control of the page operated in headless Chromium against a live run on the tiny model.

Design choices:
- The controls come from the built Blocks, not from a list kept here: every component that is not a pure
  display (`DISPLAY`) must have a driver in `DRIVERS`, keyed by its `elem_id` (`sdpg-...`), so a control
  another change adds fails this test until someone operates it here.
- Drivers run in the order of the script below (settings, the run buttons on a live run, browsing its
  records, replay, playground, comparison); each checks what its control changed, in the page or in the run.
- Failures are caught where they happen: `process_api` of the served Blocks is wrapped, so any exception in
  any event (a handler, or Gradio refusing an input) is recorded with the control that fired it, and a
  MutationObserver in the page records every error or warning toast, however briefly it shows.
- Every control with an event listener must have fired at least one event that completed without error.
"""
from __future__ import annotations

import re
import shutil
import traceback
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
from gradio.components.api_component import Api
import pytest
from transformers import AutoTokenizer
from playwright.sync_api import TimeoutError as PlaywrightTimeout, sync_playwright

import app as dashboard
from conftest import tiny_config
from fixtures.waiting import free_port, wait_for
from lab.heatmap import COLOR_MODES, WINDOW, response_length, token_values
from lab.playground import PROBE_FIELDS
from lab.explore import ANY, TABLE_LIMIT, filter_rows, prompt_choices, table_rows
from lab.viewmodel import browsable_steps, pick_group
from sdpg.methods import METHODS
from sdpg.playground import recorded_response_ids
from sdpg.run import ACTIONS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
DISPLAY = (gr.HTML, gr.Markdown, gr.Plot, gr.State, gr.Timer, Api)
"""components a person cannot operate (`Api`: the holder of a `gr.api` endpoint): everything else on the page is a
control and needs a driver"""
TOASTS = """
window.__sdpgToasts = [];
new MutationObserver(() => {
  for (const el of document.querySelectorAll('.toast-body.error, .toast-body.warning')) {
    if (!el.dataset.sdpgSeen) { el.dataset.sdpgSeen = '1'; window.__sdpgToasts.push(el.innerText); }
  }
}).observe(document, {childList: true, subtree: true});
"""

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"chromium not installed at {CHROMIUM} (apt-get install chromium)")

DRIVERS: dict[str, object] = {}
"""elem_id -> the driver that operates it (several controls may share one driver)"""
SCRIPT: list = []
"""the drivers in the order they run"""


def drives(*elem_ids: str):
    """Register a driver for the controls `elem_ids`, to run after the ones registered before it."""
    def register(fn):
        for elem_id in elem_ids:
            assert elem_id not in DRIVERS, f"two drivers for {elem_id}"
            DRIVERS[elem_id] = fn
        SCRIPT.append(fn)
        return fn
    return register


# ---------------- what a driver can do and see ----------------
class Session:
    """The page, the app's controller, and the server's record of every event it processed."""

    def __init__(self, page, ctl, demo, calls, model_dir):
        self.page, self.ctl, self.demo, self.calls, self.model_dir = page, ctl, demo, calls, model_dir
        self.ids = {block.elem_id: block._id for block in demo.blocks.values() if getattr(block, "elem_id", None)}
        self.shared = SimpleNamespace()

    def el(self, elem_id: str):
        return self.page.locator(f"#{elem_id}")

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name, exact=True).click()

    def fill(self, elem_id: str, value) -> None:
        self.el(elem_id).locator("input, textarea").first.fill(str(value))

    def choose(self, elem_id: str, option) -> None:
        self.el(elem_id).locator("input").first.click()
        self.el(elem_id).get_by_role("option", name=str(option), exact=True).click()

    def settle(self) -> None:
        """Wait until every event sent so far has completed and none followed for a moment (a late answer to an
        earlier event must not land on a control after the next one is operated)."""
        for _ in range(2):
            wait_for(lambda: all(c["done"] for c in self.calls), timeout=60, what="pending events to complete")
            self.page.wait_for_timeout(300)

    def tick(self, elem_id: str, on: bool) -> None:
        """Click a checkbox into state `on` (Playwright's check() misreads Gradio's re-rendered box)."""
        self.settle()
        box = self.el(elem_id).locator("input")
        if box.is_checked() != on:
            box.click()
        wait_for(lambda: box.is_checked() == on, timeout=10, what=f"{elem_id} to be {'on' if on else 'off'}")

    def value(self, elem_id: str) -> str:
        return self.el(elem_id).locator("input, textarea").first.input_value()

    def mark(self) -> int:
        return len(self.calls)

    def fired(self, elem_id: str, since: int, timeout: float = 60.0) -> None:
        """Wait until an event of `elem_id` fired after `since` has completed on the server."""
        block = self.ids[elem_id]
        wait_for(lambda: any(block in c["targets"] for c in self.calls[since:] if c["done"]), timeout=timeout,
                 what=f"an event of {elem_id} to complete on the server")

    def wait_text(self, elem_id: str, text: str, timeout: float = 60.0) -> None:
        try:
            self.el(elem_id).filter(has_text=text).wait_for(timeout=timeout * 1000)
        except PlaywrightTimeout:
            raise AssertionError(f"{elem_id} never showed {text!r}; it shows {self.el(elem_id).inner_text()!r}") from None

    def wait_status(self, status: str, timeout: float = 90.0) -> None:
        self.page.locator(f"#sdpg-status .sdpg-status[data-status='{status}']").wait_for(timeout=timeout * 1000)

    def buttons_enabled(self) -> set[str]:
        return {name for name in dashboard.RUN_BUTTONS if self.el(f"sdpg-{name}").is_enabled()}


def watch_events(demo: gr.Blocks) -> list[dict]:
    """Record every event the server processes: the controls that fired it, and its error if it raised."""
    calls: list[dict] = []
    process = demo.process_api

    async def watched(*args, **kwargs):
        fn = kwargs.get("block_fn", args[0] if args else None)
        fn = demo.fns[fn] if isinstance(fn, int) else fn
        call = {"targets": [t[0] for t in fn.targets], "name": fn.name, "done": False, "error": None}
        calls.append(call)
        try:
            result = await process(*args, **kwargs)
        except Exception as err:
            call["error"] = "".join(traceback.format_exception(err)[-3:])
            raise
        finally:
            call["done"] = True
        return result

    demo.process_api = watched
    return calls


def page_controls(demo: gr.Blocks) -> dict[str, gr.components.Component]:
    """elem_id -> component, for every component of the page that is not a pure display."""
    controls, unnamed = {}, []
    for block in demo.blocks.values():
        if not isinstance(block, gr.components.Component) or isinstance(block, DISPLAY):
            continue
        if not (block.elem_id or "").startswith("sdpg-"):
            unnamed.append(f"{type(block).__name__} {getattr(block, 'label', None)!r}")
            continue
        assert block.elem_id not in controls, f"two controls have elem_id {block.elem_id}"
        controls[block.elem_id] = block
    assert not unnamed, f"controls without an elem_id starting with 'sdpg-': {unnamed}"
    return controls


# ---------------- the script ----------------
@drives("sdpg-method", "sdpg-beta", "sdpg-alpha", "sdpg-ref-mode", "sdpg-gate", "sdpg-beta-warmup", "sdpg-beta-decay",
        "sdpg-lr", "sdpg-temperature", "sdpg-group-size", "sdpg-steps", "sdpg-model", "sdpg-data", "sdpg-val",
        "sdpg-task")
def settings(s: Session) -> None:
    wait_for(lambda: s.buttons_enabled() == set(ACTIONS["idle"]), timeout=30, what="the idle page's buttons")
    since = s.mark()
    s.choose("sdpg-method", "grpo")
    s.fired("sdpg-method", since)
    s.wait_text("sdpg-method", METHODS["grpo"].description[:40])
    s.choose("sdpg-method", "sdpg")
    s.wait_text("sdpg-method", METHODS["sdpg"].description[:40])
    for elem_id, value in (("sdpg-beta", 0.07), ("sdpg-alpha", 0.002), ("sdpg-beta-warmup", 1), ("sdpg-beta-decay", 3),
                           ("sdpg-lr", 0.0002), ("sdpg-temperature", 0.9), ("sdpg-group-size", 3), ("sdpg-steps", 600)):
        s.fill(elem_id, value)
    s.choose("sdpg-ref-mode", "ufkl")
    s.tick("sdpg-gate", False)
    s.page.get_by_text("Model & data").click()
    s.fill("sdpg-model", s.model_dir)
    s.fill("sdpg-data", "embedded")
    s.fill("sdpg-val", "embedded")
    s.choose("sdpg-task", "sparse")
    s.choose("sdpg-task", "add")


@drives("sdpg-start")
def start(s: Session) -> None:
    s.fill("sdpg-model", s.ctl.runs_root / "no-such-model")
    s.el("sdpg-start").click()
    s.wait_text("sdpg-message", "no such directory")
    assert s.ctl.handle is None
    s.fill("sdpg-model", s.model_dir)
    s.el("sdpg-start").click()
    s.wait_text("sdpg-message", "Started SDPG for 600 steps")
    cfg = s.ctl.handle.cfg
    assert (cfg.loss.method, cfg.loss.beta, cfg.loss.alpha, cfg.loss.ref_mode, cfg.loss.gate) == ("sdpg", 0.07, 0.002,
                                                                                                "ufkl", False)
    assert (cfg.loss.beta_warmup, cfg.loss.beta_decay, cfg.optim.lr, cfg.rollout.temperature) == (1, 3, 0.0002, 0.9)
    assert (cfg.rollout.group_size, cfg.run.steps, cfg.model.name) == (3, 600, str(s.model_dir))
    assert (cfg.data.train, cfg.data.val, cfg.data.task) == ("embedded", "embedded", "add")


@drives("sdpg-pause")
def pause(s: Session) -> None:
    wait_for(lambda: s.ctl.handle.step >= 1, timeout=120, what="a first training step")
    s.el("sdpg-pause").click()  # Playwright waits until the refresh has enabled it
    s.wait_status("paused")
    wait_for(lambda: s.buttons_enabled() == set(ACTIONS["paused"]), timeout=10, what="the paused run's buttons")


@drives("sdpg-checkpoint")
def checkpoint(s: Session) -> None:
    s.el("sdpg-checkpoint").click()
    s.wait_text("sdpg-message", "Checkpoint requested")
    wait_for(lambda: any(e["event"] == "checkpoint" for e in s.ctl.handle.records.events()), timeout=60,
             what="the checkpoint")


@drives("sdpg-resume")
def resume(s: Session) -> None:
    paused_at = s.ctl.handle.step
    s.el("sdpg-resume").click()
    s.wait_text("sdpg-message", "Resumed")
    wait_for(lambda: s.ctl.handle.step >= paused_at + 2, timeout=120, what="two more steps")


@drives("sdpg-stop")
def stop(s: Session) -> None:
    s.el("sdpg-stop").click()
    s.wait_status("stopped")
    assert s.ctl.handle.step < 600
    wait_for(lambda: s.buttons_enabled() == set(ACTIONS["stopped"]), timeout=10, what="the stopped run's buttons")
    s.shared.steps = browsable_steps(s.ctl.handle.records)
    assert len(s.shared.steps) >= 3
    wait_for(lambda: s.value("sdpg-step") == str(s.shared.steps[-1]), timeout=10, what="the newest step shown")


@drives("sdpg-step-prev", "sdpg-step-next")
def step_buttons(s: Session) -> None:
    steps = s.shared.steps
    s.el("sdpg-step-prev").click()
    wait_for(lambda: s.value("sdpg-step") == str(steps[-2]), timeout=30, what="◀ to show the step before")
    s.el("sdpg-step-next").click()
    wait_for(lambda: s.value("sdpg-step") == str(steps[-1]), timeout=30, what="▶ to show the step after")


@drives("sdpg-step", "sdpg-group")
def step_and_group(s: Session) -> None:
    first = s.shared.steps[0]
    s.tab("Rollouts")
    s.choose("sdpg-step", first)
    s.wait_text("sdpg-rollout", f"Step {first} · group 0")
    s.choose("sdpg-group", 1)
    s.wait_text("sdpg-rollout", f"Step {first} · group 1")
    assert not s.el("sdpg-follow").locator("input").is_checked()  # a step chosen by hand stops following


@drives("sdpg-follow")
def follow(s: Session) -> None:
    s.tick("sdpg-follow", True)
    wait_for(lambda: s.value("sdpg-step") == str(s.shared.steps[-1]), timeout=30, what="follow to show the newest step")


@drives("sdpg-resp", "sdpg-pos")
def token_inspector(s: Session) -> None:
    s.tab("Rollouts")
    s.fill("sdpg-resp", 1)
    s.fill("sdpg-pos", 2)
    s.page.locator("#sdpg-topk .gtitle", has_text="Response #1, position 2").wait_for(timeout=30_000)


@drives("sdpg-color-by")
def colour(s: Session) -> None:
    s.tab("Token KL")
    for label in reversed(COLOR_MODES.values()):
        s.el("sdpg-color-by").get_by_label(label, exact=True).check()
        s.page.locator("#sdpg-heatmap .gtitle", has_text=label.split("  ")[0]).wait_for(timeout=30_000)
    s.shared.group = pick_group(s.ctl.stream(), int(s.value("sdpg-step")), int(s.value("sdpg-group")))
    s.shared.longest = response_length(s.shared.group)


@drives("sdpg-heat-first", "sdpg-heat-prev", "sdpg-heat-start", "sdpg-heat-next", "sdpg-heat-last")
def token_window(s: Session) -> None:
    """The tiny model's responses (at most 10 tokens) fit in one window: every move and a typed first token
    past the end must keep (clamp) the window at token 0, and each move must answer on the server."""
    s.tab("Token KL")
    assert s.shared.longest < WINDOW
    for elem_id in ("sdpg-heat-next", "sdpg-heat-last", "sdpg-heat-prev", "sdpg-heat-first"):
        since = s.mark()
        s.el(elem_id).click()
        s.fired(elem_id, since)
        assert s.value("sdpg-heat-start") == "0", elem_id
    since = s.mark()
    s.fill("sdpg-heat-start", 7)
    s.el("sdpg-heat-start").locator("input").press("Enter")
    s.fired("sdpg-heat-start", since)
    wait_for(lambda: s.value("sdpg-heat-start") == "0", timeout=30, what="a start past the end to be clamped to 0")


@drives("sdpg-heat-peak")
def token_peak(s: Session) -> None:
    group = s.shared.group
    values = [token_values(r, "kl") for r in group["responses"]]
    resp, pos = max(((i, int(np.nanargmax(np.abs(v)))) for i, v in enumerate(values) if np.isfinite(v).any()),
                    key=lambda ip: abs(values[ip[0]][ip[1]]))
    s.el("sdpg-heat-peak").click()
    wait_for(lambda: (s.value("sdpg-resp"), s.value("sdpg-pos")) == (str(resp), str(pos)), timeout=30,
             what=f"the peak button to point the inspector at response {resp}, position {pos}")
    s.page.locator("#sdpg-topk .gtitle", has_text=f"Response #{resp}, position {pos}").wait_for(
        state="attached", timeout=30_000)


@drives("sdpg-heat-overview")
def token_overview(s: Session) -> None:
    """A click on the overview's last column of response 1's row points the inspector at its last position."""
    rows = len(s.shared.group["responses"])
    image = s.el("sdpg-heat-overview").locator("img")
    box = image.bounding_box()
    image.click(position={"x": box["width"] - 2, "y": box["height"] * 1.5 / rows})
    wait_for(lambda: (s.value("sdpg-resp"), s.value("sdpg-pos")) == ("1", str(s.shared.longest - 1)), timeout=30,
             what="a click on the overview to point the inspector at response 1's last column")


@drives("sdpg-wresp")
def whatif(s: Session) -> None:
    s.tab("What-if weights")
    s.fill("sdpg-wresp", 2)
    s.page.locator("#sdpg-whatif .gtitle", has_text="response #2").wait_for(timeout=30_000)


@drives("sdpg-list-runs", "sdpg-run-pick", "sdpg-open", "sdpg-show-live")
def replay(s: Session) -> None:
    s.tab("Replay")
    since = s.mark()
    s.el("sdpg-list-runs").click()
    s.fired("sdpg-list-runs", since)
    run_dir = str(s.ctl.handle.run_dir)
    s.choose("sdpg-run-pick", run_dir)
    s.el("sdpg-open").click()
    s.wait_text("sdpg-message", f"Opened {run_dir}")
    s.wait_text("sdpg-status", "replay")
    assert s.ctl.replay is not None
    s.el("sdpg-show-live").click()
    s.wait_text("sdpg-message", "Showing the live run")
    assert s.ctl.replay is None


@drives("sdpg-pg-step", "sdpg-pg-group", "sdpg-pg-resp", "sdpg-pg-probe")
def probe_recorded(s: Session) -> None:
    step = s.shared.steps[-1]
    s.tab("Playground")
    s.fill("sdpg-pg-step", step)
    s.fill("sdpg-pg-group", 1)
    s.fill("sdpg-pg-resp", 2)
    s.el("sdpg-pg-probe").click()
    s.page.locator("p", has_text="Asked the live run").wait_for(timeout=60_000)
    s.wait_text("sdpg-pg-topk", "position 0")
    response = s.ctl.handle.records.rollouts(step)[1]["responses"][2]
    # the probe re-tokenizes the recorded text: the random tiny model's samples may not round-trip to its tokens
    s.shared.recorded_length = len(recorded_response_ids(AutoTokenizer.from_pretrained(s.model_dir), response))


@drives("sdpg-pg-field", "sdpg-pg-position")
def probe_views(s: Session) -> None:
    for label in PROBE_FIELDS.values():
        s.el("sdpg-pg-field").get_by_label(label, exact=True).check()
        s.page.locator("#sdpg-pg-heatmap .gtitle", has_text=label.split("  ")[0]).wait_for(timeout=30_000)
    since = s.mark()
    s.fill("sdpg-pg-position", s.shared.recorded_length + 5)
    s.fired("sdpg-pg-position", since)
    s.wait_text("sdpg-pg-topk", f"is outside the response (0 … {s.shared.recorded_length - 1})")  # the recorded one
    s.fill("sdpg-pg-position", 1)
    s.wait_text("sdpg-pg-topk", "position 1")


@drives("sdpg-pg-source", "sdpg-pg-prompt", "sdpg-pg-hint", "sdpg-pg-answer", "sdpg-pg-response", "sdpg-pg-advantage",
        "sdpg-pg-free")
def probe_typed(s: Session) -> None:
    s.el("sdpg-pg-source").get_by_label("typed", exact=True).check()
    for elem_id, value in (("sdpg-pg-prompt", "Q:3+4\n"), ("sdpg-pg-hint", "Hint: 7 (3+4=7)\n"), ("sdpg-pg-answer", "7"),
                           ("sdpg-pg-response", "\\boxed{7}"), ("sdpg-pg-advantage", -0.5),
                           ("sdpg-pg-free", "the answer is odd")):
        s.fill(elem_id, value)
    s.el("sdpg-pg-probe").click()
    s.wait_text("sdpg-pg-summary", "Response advantage A = -0.50")
    rows = s.page.locator("#sdpg-pg-heatmap .ytick text").all_text_contents()
    assert any(r.startswith("free text") for r in rows), rows


@drives("sdpg-pg-problems", "sdpg-pg-samples", "sdpg-pg-measure")
def gap(s: Session) -> None:
    s.fill("sdpg-pg-problems", 2)
    s.fill("sdpg-pg-samples", 1)
    s.el("sdpg-pg-measure").click()
    s.wait_text("sdpg-pg-gap", "2 problems × 1 samples", timeout=120)


@drives("sdpg-cmp-refresh", "sdpg-cmp-pick", "sdpg-cmp-go")
def compare(s: Session) -> None:
    s.tab("Compare runs")
    since = s.mark()
    s.el("sdpg-cmp-refresh").click()
    s.fired("sdpg-cmp-refresh", since)
    s.choose("sdpg-cmp-pick", str(s.ctl.handle.run_dir))
    s.el("sdpg-cmp-go").click()
    s.wait_text("sdpg-cmp-summary", s.ctl.handle.run_dir.name)
    s.page.locator("#sdpg-cmp-curves .scatterlayer .trace").first.wait_for(state="attached", timeout=30_000)


@drives("sdpg-table-refresh", "sdpg-table-search", "sdpg-table-reward-min", "sdpg-table-reward-max", "sdpg-table-adv",
        "sdpg-table-gate", "sdpg-table-status")
def rollout_table(s: Session) -> None:
    rows = table_rows(s.ctl.stream().group_index())
    s.tab("Across steps")
    s.tab("Rollout table")

    def shows(n: int, what: str) -> None:
        # anchored: "0 of 30 recorded" is a substring of "30 of 30 recorded"
        count = re.compile(rf"^\s*{n} of {len(rows)} recorded")
        s.page.locator("#sdpg-table-count", has_text=count).wait_for(timeout=30_000)
        assert s.page.locator("#sdpg-table .sdpg-table-row").count() == min(n, TABLE_LIMIT), what

    s.el("sdpg-table-refresh").click()
    shows(len(rows), "↻ to list every recorded response")
    token = next(r["text_head"] for r in rows if r.get("text_head"))[:2]
    s.fill("sdpg-table-search", token)
    shows(len(filter_rows(rows, text=token)), f"the search for {token!r}")
    s.fill("sdpg-table-search", "")
    s.fill("sdpg-table-reward-min", "x")
    s.wait_text("sdpg-table", "Reward ≥")  # a bound that is not a number is named, the table kept
    s.fill("sdpg-table-reward-min", "0.5")
    shows(len(filter_rows(rows, min_reward=0.5)), "reward ≥ 0.5")
    s.fill("sdpg-table-reward-max", "0.4")
    shows(0, "an empty reward range")
    s.fill("sdpg-table-reward-min", "")
    s.fill("sdpg-table-reward-max", "")
    shows(len(rows), "cleared bounds")
    s.choose("sdpg-table-adv", "positive")
    shows(len(filter_rows(rows, advantage="positive")), "advantage > 0")
    s.choose("sdpg-table-gate", "off")
    shows(len(filter_rows(rows, advantage="positive", gate="off")), "advantage > 0, gate off")
    s.choose("sdpg-table-adv", ANY)
    s.choose("sdpg-table-gate", ANY)
    status = str(rows[0]["status"])
    s.choose("sdpg-table-status", status)
    shows(len(filter_rows(rows, status=status)), f"status {status}")


@drives("sdpg-prompt-refresh", "sdpg-prompt-pick")
def prompt_across(s: Session) -> None:
    choices = prompt_choices(s.ctl.stream().group_index())
    s.tab("Prompt across steps")
    s.el("sdpg-prompt-refresh").click()
    wait_for(lambda: s.value("sdpg-prompt-pick") == choices[0][0], timeout=30, what="↻ to pick the first prompt")
    s.wait_text("sdpg-prompt-steps", choices[0][1].strip()[:8])
    label, prompt = choices[-1]
    s.choose("sdpg-prompt-pick", label)
    s.wait_text("sdpg-prompt-steps", prompt.strip()[:8])


@drives("sdpg-export", "sdpg-export-file")
def export(s: Session) -> None:
    step, name = s.value("sdpg-step"), s.ctl.handle.run_dir.name
    s.tab("Export")
    s.el("sdpg-export").click()
    s.wait_text("sdpg-export-message", f"Exported step {step} of {name}")
    link = s.el("sdpg-export-file").locator(f"a[download='{name}-step{step}.html']")
    with s.page.expect_download() as download:
        link.click()
    saved = Path(download.value.path())
    assert saved.read_text(encoding="utf-8").lstrip().lower().startswith("<!doctype html")


@drives("sdpg-race-a", "sdpg-race-b", "sdpg-race-start", "sdpg-race-pause", "sdpg-race-resume", "sdpg-race-stop")
def race(s: Session) -> None:
    """A race planned long enough to be paused before it ends (the tiny model does 5-10 steps a second), stopped
    after a first common step; the page's top status card shows the race meanwhile."""
    s.fill("sdpg-steps", 400)
    s.tab("Race")
    s.choose("sdpg-race-a", "grpo")
    s.choose("sdpg-race-b", "sdpg")
    s.el("sdpg-race-start").click()
    s.wait_text("sdpg-race-message", "Race started: GRPO vs SDPG for 400 steps")
    race = s.ctl.races.race
    assert race.methods == ("grpo", "sdpg")
    s.el("sdpg-race-pause").click()
    s.wait_text("sdpg-race-message", "Pause requested for both runs")
    state = s.page.locator("#sdpg-race-state")
    wait_for(lambda: state.count() and state.inner_text().count(": paused at step") == 2, timeout=120,
             what="both race runs to show paused")
    s.page.locator("#sdpg-status .sdpg-race-card[data-status='paused']").wait_for(timeout=30_000)
    s.el("sdpg-race-resume").click()
    s.wait_text("sdpg-race-message", "Resume requested for both runs")
    wait_for(lambda: s.ctl.races.view.common_steps(), timeout=120, what="a step both race runs recorded")
    s.el("sdpg-race-stop").click()
    s.wait_text("sdpg-race-message", "Stop requested for both runs")
    wait_for(lambda: not race.active, timeout=120, what="the race to end")
    wait_for(lambda: sum(state.inner_text().count(f": {end} at step") for end in ("stopped", "finished")) == 2,
             timeout=30, what="both race runs to show how they ended")


@drives("sdpg-race-step", "sdpg-race-group", "sdpg-race-follow", "sdpg-race-color")
def race_views(s: Session) -> None:
    steps = s.ctl.races.view.common_steps()
    wait_for(lambda: s.value("sdpg-race-step") == str(steps[-1]), timeout=30, what="the race's newest common step")
    s.choose("sdpg-race-step", steps[0])
    s.choose("sdpg-race-group", 1)
    s.page.locator("#sdpg-race-heat-a .gtitle", has_text="GRPO").wait_for(timeout=30_000)
    assert not s.el("sdpg-race-follow").locator("input").is_checked()  # a step chosen by hand stops following
    s.tick("sdpg-race-follow", True)
    wait_for(lambda: s.value("sdpg-race-step") == str(steps[-1]), timeout=30, what="follow to show the newest step")
    for label in list(COLOR_MODES.values())[1:]:
        s.el("sdpg-race-color").get_by_label(label, exact=True).check()
        s.page.locator("#sdpg-race-heat-b .gtitle", has_text=label.split("  ")[0]).wait_for(timeout=30_000)


@drives("sdpg-race-pick", "sdpg-race-open", "sdpg-race-live")
def race_replay(s: Session) -> None:
    race_dir = str(s.ctl.races.race.race_dir)
    s.el("sdpg-race-pick").locator("input").first.click()  # focus lists the recorded races
    s.el("sdpg-race-pick").get_by_role("option", name=race_dir, exact=True).click()
    s.el("sdpg-race-open").click()
    s.wait_text("sdpg-race-message", f"Opened race {race_dir}")
    assert s.ctl.races.view.race_dir == Path(race_dir)
    s.el("sdpg-race-live").click()
    s.wait_text("sdpg-race-message", "Showing the live race")


# ---------------- the test ----------------
@pytest.fixture
def served_page(tiny_model_dir, tmp_path):
    """The page over an empty runs root (the tiny model's folder allowed), its server's events recorded."""
    ctl = dashboard.Controller(tmp_path / "runs", allowed_roots=[tiny_model_dir])
    demo = dashboard.build_app(ctl, base_config=tiny_config(tiny_model_dir, ""))
    calls = watch_events(demo)
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    yield url, ctl, demo, calls
    if ctl.handle is not None:
        ctl.handle.stop(wait=True, timeout=60)
    demo.close()


def test_every_control_has_a_driver():
    demo = dashboard.build_app(dashboard.Controller("unused-runs-root"))
    controls = page_controls(demo)
    missing = sorted(set(controls) - set(DRIVERS))
    stale = sorted(set(DRIVERS) - set(controls))
    assert not missing, f"controls no driver operates (add one to tests/test_every_control.py): {missing}"
    assert not stale, f"drivers of controls the page no longer has: {stale}"


def test_every_control_works_in_a_real_browser(served_page, tiny_model_dir):
    url, ctl, demo, calls = served_page
    controls = page_controls(demo)
    assert set(controls) == set(DRIVERS)
    done = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1100})
            page.add_init_script(TOASTS)
            page.goto(url)
            page.wait_for_selector("#sdpg-status .sdpg-status", timeout=60_000)
            s = Session(page, ctl, demo, calls, tiny_model_dir)
            for driver in SCRIPT:
                try:
                    s.settle()
                    driver(s)
                finally:
                    errors = [f"{c['name']}: {c['error']}" for c in calls if c["error"]]
                    toasts = page.evaluate("window.__sdpgToasts")
                    assert not errors and not toasts, f"in {driver.__name__}: server errors {errors}, toasts {toasts}"
                done.append(driver.__name__)
        finally:
            browser.close()
    assert done == [d.__name__ for d in SCRIPT]
    listened = {t[0] for fn in demo.fns.values() for t in fn.targets}
    fired = {t for c in calls if c["done"] and not c["error"] for t in c["targets"]}
    silent = sorted(elem_id for elem_id, c in controls.items() if c._id in listened and c._id not in fired)
    assert not silent, f"controls whose events never completed on the server: {silent}"
