"""A 4096-token response of real Qwen tokens in headless Chromium: the token window moves to the end, and a click
on the overview jumps into the middle."""
from html import unescape

import numpy as np
import pytest
from playwright.sync_api import sync_playwright

import app as dashboard
from fixtures.waiting import free_port
from lab.heatmap import WINDOW, show_token
from sdpg.records import RecordStream
from sdpg.vocab import token_strings
from test_browser import ARTIFACTS, CHROMIUM, FLAGS, pytestmark  # noqa: F401  (skipped where chromium is missing)
from tests.fixtures.qwen_vocab import qwen_tokenizer
from tests.fixtures.records import fixture_config, make_long_group, make_metrics_row

N = 4096


@pytest.fixture
def long_run_page(tmp_path):
    tok = qwen_tokenizer()
    ids = list(range(200, 2200)) + list(range(100_000, 100_500))
    vocab = token_strings(tok, ids)
    group = make_long_group(1, 0, N, group_size=4, vocab=vocab)
    for r in group["responses"]:
        r["token_ids"] = np.asarray(ids)[r["token_ids"]]  # the tokenizer's ids, as the builder gives them
        r["text"] = tok.decode(r["token_ids"].tolist())
    run_dir = tmp_path / "runs" / "long"
    stream = RecordStream(run_dir)
    stream.write_config(fixture_config(1).to_dict())
    stream.emit_rollouts(1, [group])
    stream.emit_metrics(1, make_metrics_row(1, [group]))
    stream.emit_event("finished", step=1)
    ctl = dashboard.Controller(tmp_path / "runs")
    assert ctl.open_replay(str(run_dir))[1] == "ok"
    demo = dashboard.build_app(ctl)
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    yield url, group
    demo.close()


def _cells(page) -> list[str]:
    return [unescape(t) for t in page.locator("#sdpg-heatmap .heatmaplayer text").all_text_contents()]


def test_the_window_reaches_the_end_of_a_4096_token_response(long_run_page):
    url, group = long_run_page
    first = group["responses"][0]["tokens"]
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.goto(url)
            page.get_by_role("tab", name="Token KL").click()
            page.wait_for_selector("#sdpg-heatmap .heatmaplayer text", timeout=60_000)
            start_cells = _cells(page)
            page.locator("#sdpg-heat-last").click()
            page.wait_for_function("document.querySelector('#sdpg-heatmap .gtitle').textContent"
                                   f".includes('tokens {N - WINDOW}–{N - 1} of {N}')", timeout=30_000)
            end_cells = _cells(page)
            img = page.locator("#sdpg-heat-overview img")
            box = img.bounding_box()
            img.click(position={"x": box["width"] / 2, "y": 3})
            page.wait_for_function("!document.querySelector('#sdpg-heatmap .gtitle').textContent"
                                   f".includes('tokens {N - WINDOW}–')", timeout=30_000)
            middle_title = page.locator("#sdpg-heatmap .gtitle").text_content()
            page.get_by_role("tab", name="Rollouts").click()
            page.wait_for_selector("#sdpg-topk .gtitle", timeout=30_000)
            topk_title = page.locator("#sdpg-topk .gtitle").text_content()
            page.screenshot(path=str(ARTIFACTS / "dashboard-long-response.png"), full_page=True)
        finally:
            browser.close()
    assert start_cells[:WINDOW] == [unescape(show_token(t)) for t in first[:WINDOW]]
    assert end_cells[:WINDOW] == [unescape(show_token(t)) for t in first[-WINDOW:]]  # its last tokens
    lo = int(middle_title.split("tokens ")[1].split("–")[0])
    assert abs(lo + WINDOW // 2 - N // 2) <= 8, middle_title  # the click landed mid-response
    assert f"position {lo + WINDOW // 2}" in topk_title
