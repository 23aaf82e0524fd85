"""The dashboard in headless Chromium after a real short run: the KL heatmap must be drawn in the page.

Chromium comes from the system (`apt-get install chromium`); Playwright only drives it, it never
downloads a browser. Screenshots land in test-artifacts/ (git-ignored); `SDPG_SCREENSHOTS=docs` writes the
playground and comparison ones where the README shows them, from runs of the warm-started embedded model.
"""
import os
import shutil
from html import unescape
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

import app as dashboard
from conftest import tiny_config
from fixtures.waiting import free_port
from lab.heatmap import show_token
from lab.viewmodel import browsable_steps
from sdpg.config import DataConfig, RolloutConfig
from sdpg.run import RunHandle

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"chromium not installed at {CHROMIUM} (apt-get install chromium)")



@pytest.fixture
def finished_run_page(tiny_model_dir, tmp_path):
    """A served dashboard whose live run (3 real steps on the tiny model) has finished; yields its URL and ctl."""
    ctl = dashboard.Controller(tmp_path / "runs")
    demo = dashboard.build_app(ctl, base_config=tiny_config(tiny_model_dir, ""))
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    cfg = tiny_config(tiny_model_dir, "")
    cfg.run.steps = 3
    ctl.start(cfg)
    ctl.handle.join(timeout=300)
    assert ctl.handle.status == "finished", f"run ended as {ctl.handle.status}: {ctl.handle.error}"
    yield url, ctl
    demo.close()


def test_page_draws_the_token_kl_heatmap(finished_run_page):
    url, ctl = finished_run_page
    ARTIFACTS.mkdir(exist_ok=True)
    tokens = [r["tokens"] for r in ctl.handle.records.rollouts(3)[0]["responses"]]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#sdpg-curves .js-plotly-plot .scatterlayer .trace", state="attached", timeout=60_000)
            assert "FINISHED" in page.inner_text("#sdpg-status")
            page.screenshot(path=str(ARTIFACTS / "dashboard-curves.png"), full_page=True)
            page.get_by_role("tab", name="Token KL").click()
            page.wait_for_selector("#sdpg-heatmap .heatmaplayer .hm", timeout=30_000)
            cells = page.locator("#sdpg-heatmap .heatmaplayer text").all_text_contents()
            page.screenshot(path=str(ARTIFACTS / "dashboard-heatmap.png"), full_page=True)
        finally:
            browser.close()
    shown = [t for t in cells if t]
    assert shown[:len(tokens[0])] == [dashboard_token(t) for t in tokens[0][:len(shown)]]
    assert (ARTIFACTS / "dashboard-heatmap.png").stat().st_size > 10_000


def dashboard_token(token: str) -> str:
    """A token as the heatmap cell shows it (whitespace made visible; the browser unescapes entities)."""
    return unescape(show_token(token))


SHOWCASE = bool(os.environ.get("SDPG_SCREENSHOTS"))
"""pictures for the README: the runs use the warm-started embedded model, so the numbers they show mean something"""


def page_config(model_dir, run_dir, **overrides):
    """The tiny test model's quick config, or with SHOWCASE the embedded model on its own task."""
    cfg = tiny_config(model_dir, run_dir, **overrides)
    if SHOWCASE:
        cfg.model.name, cfg.data.digits = "embedded", DataConfig().digits
        cfg.rollout.max_new_tokens = RolloutConfig().max_new_tokens
    return cfg.validate()


@pytest.fixture
def two_runs_page(tiny_model_dir, tmp_path):
    """A served dashboard over a runs root with a finished GRPO run (seed 1) and a finished live SDPG run (seed 0)."""
    runs_root = tmp_path / "runs"
    grpo = page_config(tiny_model_dir, runs_root / "grpo-s1", loss__method="grpo", run__seed=1, run__steps=3)
    grpo.loss.alpha = 0.0
    RunHandle(grpo).start().join(timeout=300)
    ctl = dashboard.Controller(runs_root)
    demo = dashboard.build_app(ctl, base_config=page_config(tiny_model_dir, ""))
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    cfg = page_config(tiny_model_dir, runs_root / "sdpg-s0", run__steps=3)
    ctl.start(cfg)
    ctl.handle.join(timeout=300)
    assert ctl.handle.status == "finished", f"run ended as {ctl.handle.status}: {ctl.handle.error}"
    yield url, ctl
    demo.close()


def test_playground_and_compare_tabs_draw_their_views(two_runs_page):
    url, ctl = two_runs_page
    shots = Path(os.environ.get("SDPG_SCREENSHOTS") or ARTIFACTS)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            page.wait_for_selector("#sdpg-curves .js-plotly-plot .scatterlayer .trace", state="attached", timeout=60_000)
            page.get_by_role("tab", name="Playground").click()
            page.get_by_label("typed", exact=True).check()
            page.get_by_label("Free-text context").fill("Hint: the answer is below 500")
            page.get_by_role("button", name="Probe this response").click()
            page.wait_for_selector("#sdpg-pg-heatmap .heatmaplayer .hm", timeout=60_000)
            rows = page.locator("#sdpg-pg-heatmap .ytick text").all_text_contents()
            page.get_by_label("Problems", exact=True).fill("32" if SHOWCASE else "4")
            page.get_by_label("Samples per problem (k)", exact=True).fill("4" if SHOWCASE else "2")
            page.get_by_role("button", name="Measure gap").click()
            page.wait_for_selector("#sdpg-pg-gap table", timeout=300_000 if SHOWCASE else 60_000)
            gap_rows = page.locator("#sdpg-pg-gap tr").count()
            page.screenshot(path=str(shots / "dashboard-playground.png"), full_page=True)

            page.get_by_role("tab", name="Compare runs").click()
            page.get_by_role("button", name="↻ Refresh list").click()
            for name in ("sdpg-s0", "grpo-s1"):
                page.get_by_label("Runs to compare").click()
                page.get_by_role("option", name=str(ctl.runs_root / name)).click()
            page.get_by_role("button", name="Compare", exact=True).click()
            page.wait_for_selector("#sdpg-cmp-curves .scatterlayer .trace", state="attached", timeout=60_000)
            page.wait_for_function("document.querySelector('#sdpg-cmp-summary').innerText.includes('grpo-s1')",
                                   timeout=60_000)  # past the first look the tab opens on
            page.wait_for_selector("#sdpg-cmp-diff table", timeout=30_000)
            diff = page.inner_text("#sdpg-cmp-diff")
            summary = page.inner_text("#sdpg-cmp-summary")
            page.screenshot(path=str(shots / "dashboard-compare.png"), full_page=True)
        finally:
            browser.close()
    labels = {r.split("  (")[0]: r for r in rows}
    assert sorted(labels) == sorted(["real hint", "no hint", "answer only", "solution only", "wrong answer",
                                     "own prompt (sanity)", "free text"])
    assert labels["own prompt (sanity)"].endswith("(KL 0.000)")
    assert gap_rows == 1 + 7  # header + six contexts and the free text
    assert "loss.method" in diff and "run.seed" in diff and "sdpg-s0" in summary and "grpo-s1" in summary


def test_step_buttons_move_the_shown_step(finished_run_page):
    url, ctl = finished_run_page
    assert browsable_steps(ctl.handle.records) == [1, 2, 3]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            shown = []
            wait_for_step_shown(page, "3")  # following the newest step
            for button, expected in (("prev", "2"), ("prev", "1"), ("prev", "1"), ("next", "2"), ("next", "3"),
                                     ("next", "3")):
                page.locator(f"#sdpg-step-{button}").click()
                wait_for_step_shown(page, expected)
                shown.append(page.locator("#sdpg-step input").input_value())
            follow = page.locator("#sdpg-follow input").is_checked()
        finally:
            browser.close()
    assert shown == ["2", "1", "1", "2", "3", "3"]
    assert not follow  # a step chosen by hand stops following the newest


def wait_for_step_shown(page, step: str) -> None:
    """Wait until the step dropdown shows `step` (its refresh runs server-side first)."""
    page.wait_for_function("s => document.querySelector('#sdpg-step input')?.value === s", arg=step, timeout=30_000)
