"""The exported HTML file: written by the command and the page's code, and drawn by Chromium with no network."""
import shutil
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from fixtures.records import write_run
from lab.export import export_run, main
from sdpg.records import RecordStream

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def test_the_command_writes_one_file_for_the_chosen_step_and_names_bad_input(tmp_path, capsys):
    run = write_run(tmp_path / "run", steps=3)
    main([str(run), "--step", "2"])
    assert "export-step2.html" in capsys.readouterr().out
    page = (run / "export-step2.html").read_text()
    group = RecordStream.open(run).rollouts(2)[0]
    assert "Rollout inspector — step 2, group 0" in page and group["prompt"] in page
    assert '"method": "sdpg"' in page or "&quot;method&quot;: &quot;sdpg&quot;" in page
    assert page.count("<script src=") == 0, "no script is loaded from elsewhere"
    assert export_run(run).name == "export-step3.html"
    with pytest.raises(SystemExit, match=r"step 9 .* steps with records: \[1, 2, 3\]"):
        main([str(run), "--step", "9"])
    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nowhere")])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"chromium not installed at {CHROMIUM}")
def test_the_exported_file_draws_every_plot_in_chromium_with_the_network_blocked(tmp_path):
    path = export_run(write_run(tmp_path / "run", steps=3), step=3)
    blocked = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            context = browser.new_context(offline=True)
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                          else (blocked.append(route.request.url), route.abort()))
            page = context.new_page()
            page.goto(path.as_uri())
            page.wait_for_selector(".js-plotly-plot .main-svg", state="attached", timeout=30_000)
            assert page.locator(".sdpg-export-figure .js-plotly-plot").count() == 4
            for selector in (".scatterlayer .trace", ".heatmaplayer .hm", ".barlayer .trace"):
                assert page.locator(selector).count() > 0, f"nothing drawn for {selector}"
            assert "Rollout inspector" in page.inner_text("body")
            page.screenshot(path=str(tmp_path / "export.png"), full_page=True)
        finally:
            browser.close()
    assert blocked == [], f"the file asked the network for {blocked}"
