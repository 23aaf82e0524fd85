"""The teaching features in headless Chromium: a race steered from the page, the rollout table's filters, one
prompt across steps, and the Export button — all on real runs of the tiny model (the warm-started embedded model
with `SDPG_SCREENSHOTS=docs`, which also writes the pictures docs/README.md shows)."""
import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

import app as dashboard
from fixtures.waiting import free_port, wait_for
from lab.explore import filter_rows, table_rows
from sdpg.race import RACE_FILE
from conftest import tiny_config
from lab.export import export_run
from sdpg.config import DataConfig
from sdpg.tasks import TASKS
from test_browser import ARTIFACTS, CHROMIUM, FLAGS, SHOWCASE

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"chromium not installed at {CHROMIUM} (apt-get install chromium)")
RACE_STEPS = 4 if SHOWCASE else 2
"""steps each run has finished before the race is paused (and the screenshot taken)"""


@pytest.fixture
def lesson_page(tiny_model_dir, tmp_path):
    """A served dashboard over an empty runs root; its base config repeats 3 prompts, so they recur across steps."""
    ctl = dashboard.Controller(tmp_path / "runs", allowed_roots=[Path(tiny_model_dir).parent])
    base = tiny_config(tiny_model_dir, "", data__n_train=3, run__steps=200, reward__overlong_buffer=6)
    if SHOWCASE:  # the shipped warm-started model on the demo task, its rewards spread by skill alone
        base.model.name, base.data.task, base.reward.overlong_buffer = "embedded", "reasoning", 0
        base.data.digits = DataConfig.digits
        base.rollout.max_new_tokens = TASKS["reasoning"].max_new_tokens
        base.validate()
    demo = dashboard.build_app(ctl, base_config=base)
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    yield url, ctl
    demo.close()


def metric_steps(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def open_tab(page, name: str) -> None:
    """Click the tab `name`, through the "More tabs" menu when the tab row has no room for it."""
    page.wait_for_selector("[role=tablist] [role=tab]", timeout=60_000)
    tab = page.get_by_role("tab", name=name, exact=True)
    if tab.count() and tab.first.is_visible():
        tab.first.click()
        return
    page.locator("[aria-label='More tabs']:visible").first.click()
    page.locator(".overflow-dropdown button:visible", has_text=name).first.click()


def matched(page) -> int:
    """The number of matching rows the table's count line states."""
    return int(page.inner_text("#sdpg-table-count").split()[0])


def wait_for_count(page, n: int) -> None:
    """Wait until the table's count line says `n` rows match."""
    page.wait_for_function(f"document.querySelector('#sdpg-table-count') && "
                           f"document.querySelector('#sdpg-table-count').innerText.startsWith('{n} of ')",
                           timeout=30_000)


def choose(page, label: str, option: str) -> None:
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option, exact=True).click()


def test_race_table_prompt_across_steps_and_export_in_the_browser(lesson_page):
    url, ctl = lesson_page
    shots = Path(os.environ.get("SDPG_SCREENSHOTS") or ARTIFACTS)
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(url)
            open_tab(page, "Race")
            assert "IDLE" in page.inner_text("#sdpg-status")
            page.locator("#sdpg-race-start").click()
            page.wait_for_selector("#sdpg-race-message .sdpg-message", timeout=30_000)
            assert page.inner_text("#sdpg-race-message").startswith("Race started"), page.inner_text("#sdpg-race-message")
            race_dir = next(ctl.runs_root.glob(f"race-*/{RACE_FILE}")).parent
            page.wait_for_selector("#sdpg-status .sdpg-race-card", timeout=30_000)  # the top card: the race, not IDLE
            racing = page.inner_text("#sdpg-status")
            wait_for(lambda: min(metric_steps(race_dir / m) for m in ("grpo", "sdpg")) >= RACE_STEPS, timeout=600,
                     what=f"{RACE_STEPS} steps in both runs", every=0.5)
            page.locator("#sdpg-race-pause").click()
            page.wait_for_function("document.querySelector('#sdpg-race-state') && "
                                   "document.querySelector('#sdpg-race-state').innerText.split('paused').length == 3",
                                   timeout=120_000)
            page.wait_for_selector("#sdpg-status .sdpg-race-card[data-status='paused']", timeout=30_000)
            paused_card = page.inner_text("#sdpg-status")
            paused_at = min(h.step for h in ctl.races.race.handles)
            page.locator("#sdpg-race-follow input").uncheck()
            for side in ("a", "b"):
                page.wait_for_selector(f"#sdpg-race-heat-{side} .heatmaplayer .hm", timeout=60_000)
            curves = set(page.locator("#sdpg-race-curves .legendtext").all_text_contents())
            inspectors = [page.inner_text(f"#sdpg-race-insp-{side}") for side in ("a", "b")]
            page.screenshot(path=str(shots / "dashboard-race.png"), full_page=True)
            page.locator("#sdpg-race-stop").click()
            page.wait_for_function("document.querySelector('#sdpg-race-state').innerText.split('stopped').length == 3",
                                   timeout=120_000)
            page.wait_for_selector("#sdpg-status .sdpg-race-card[data-status='stopped']", timeout=30_000)
            stopped_card = page.inner_text("#sdpg-status")

            page.locator("#sdpg-race-pick input").first.click()  # the finished race, opened as a recording
            page.get_by_role("option", name=str(race_dir), exact=True).click()
            page.locator("#sdpg-race-open").click()
            page.wait_for_selector(f"#sdpg-race-message :text('Opened race {race_dir}')", timeout=30_000)
            assert ctl.races.view.views[0].replay is not None, "the race view reads the recording, not the handles"
            first = ctl.races.view.common_steps()[0]
            page.locator("#sdpg-race-step input").first.click()
            page.get_by_role("option", name=str(first), exact=True).click()
            for side in ("a", "b"):  # both heatmaps redrawn from the recording at the chosen step
                page.locator(f"#sdpg-race-heat-{side} .gtitle", has_text=f"Step {first}, group").wait_for(timeout=60_000)
                page.locator(f"#sdpg-race-insp-{side}", has_text=f"Step {first} · group").wait_for(timeout=60_000)
            replayed_state = page.inner_text("#sdpg-race-state")
            replayed_curves = set(page.locator("#sdpg-race-curves .legendtext").all_text_contents())
            replayed_inspectors = [page.inner_text(f"#sdpg-race-insp-{side}") for side in ("a", "b")]

            text, kind = ctl.open_replay(str(race_dir / "sdpg"))
            assert kind == "ok", text
            open_tab(page, "Across steps")
            page.locator("#sdpg-table-refresh").click()
            page.wait_for_selector("#sdpg-table-count", timeout=30_000)
            rows = table_rows(ctl.replay.group_index())
            assert matched(page) == len(rows)
            negative = filter_rows(rows, advantage="negative")
            prompt = next(r["prompt"] for r in reversed(negative)).strip()
            searched = filter_rows(negative, text=prompt)
            rewarded = filter_rows(searched, min_reward=0.0)
            choose(page, "Advantage", "negative")
            wait_for_count(page, len(negative))
            advantages = [float(t) for t in page.locator("#sdpg-table .sdpg-table-row td:nth-child(5)").all_text_contents()]
            page.get_by_label("Search text", exact=True).fill(prompt)
            wait_for_count(page, len(searched))
            page.get_by_label("Reward ≥", exact=True).fill("0")
            wait_for_count(page, len(rewarded))
            rewards = [float(t) for t in page.locator("#sdpg-table .sdpg-table-row td:nth-child(4)").all_text_contents()]
            page.get_by_label("Reward ≥", exact=True).fill("lots")
            page.wait_for_selector("#sdpg-table :text('is not a number')", timeout=30_000)
            page.get_by_label("Reward ≥", exact=True).fill("")
            wait_for_count(page, len(searched))
            page.screenshot(path=str(shots / "dashboard-table.png"), full_page=True)

            open_tab(page, "Prompt across steps")
            page.locator("#sdpg-prompt-refresh").click()
            page.wait_for_selector("#sdpg-prompt-fig .scatterlayer .trace", state="attached", timeout=30_000)
            prompt_steps = page.locator("#sdpg-prompt-steps .sdpg-prompt-step").all_inner_texts()
            page.screenshot(path=str(shots / "dashboard-prompt-steps.png"), full_page=True)

            open_tab(page, "Export")
            page.locator("#sdpg-export").click()
            page.wait_for_selector("#sdpg-export-file a", timeout=60_000)
            exported = page.inner_text("#sdpg-export-message")
            offline = browser.new_page(viewport={"width": 1400, "height": 1000})
            offline.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
            offline.goto(export_run(race_dir / "sdpg", out=race_dir / "export.html").as_uri())
            offline.wait_for_selector(".heatmaplayer .hm", timeout=60_000)
            offline.screenshot(path=str(shots / "export.png"), full_page=True)
        finally:
            browser.close()
    assert {"grpo", "sdpg"} <= curves
    assert inspectors[0].startswith("GRPO") and inspectors[1].startswith("SDPG")
    assert "RACE · GRPO vs SDPG · step" in racing and "IDLE" not in racing, racing
    assert paused_card.startswith("PAUSED") and f"step {paused_at} / " in paused_card, paused_card
    assert paused_card.count("paused at step") == 2, paused_card
    assert stopped_card.startswith("STOPPED") and stopped_card.count("stopped at step") == 2, stopped_card
    assert replayed_state.count("stopped") == 2 and {"grpo", "sdpg"} <= replayed_curves
    assert f"GRPO\nStep {first} · group" in replayed_inspectors[0], replayed_inspectors
    assert f"SDPG\nStep {first} · group" in replayed_inspectors[1], replayed_inspectors
    assert 0 < len(negative) < len(rows) and 0 < len(searched) < len(negative)
    assert advantages and all(a < 0 for a in advantages)
    assert all(r >= 0 for r in rewards)
    assert len(prompt_steps) >= 2 and [int(s.split()[1]) for s in prompt_steps] == sorted(int(s.split()[1]) for s in prompt_steps)
    assert exported.startswith("Exported step")
