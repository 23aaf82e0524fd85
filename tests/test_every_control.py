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

import shutil
import traceback
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
from gradio.components.api_component import Api
import pytest
from playwright.sync_api import sync_playwright

import app as dashboard
from conftest import tiny_config
from fixtures.waiting import free_port, wait_for
from lab.heatmap import COLOR_MODES
from lab.playground import PROBE_FIELDS
from lab.viewmodel import browsable_steps
from sdpg.methods import METHODS
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
        self.page.get_by_role("option", name=str(option), exact=True).click()

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
        self.el(elem_id).filter(has_text=text).wait_for(timeout=timeout * 1000)

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
                           ("sdpg-lr", 0.0002), ("sdpg-temperature", 0.9), ("sdpg-group-size", 3), ("sdpg-steps", 60)):
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
    s.wait_text("sdpg-message", "Started SDPG for 60 steps")
    cfg = s.ctl.handle.cfg
    assert (cfg.loss.method, cfg.loss.beta, cfg.loss.alpha, cfg.loss.ref_mode, cfg.loss.gate) == ("sdpg", 0.07, 0.002,
                                                                                                "ufkl", False)
    assert (cfg.loss.beta_warmup, cfg.loss.beta_decay, cfg.optim.lr, cfg.rollout.temperature) == (1, 3, 0.0002, 0.9)
    assert (cfg.rollout.group_size, cfg.run.steps, cfg.model.name) == (3, 60, str(s.model_dir))
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
    assert s.ctl.handle.step < 60
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
    s.shared.recorded_length = len(s.ctl.handle.records.rollouts(step)[1]["responses"][2]["tokens"])


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
