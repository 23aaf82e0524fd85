"""The committed comparison results load as runs, so the Compare tab has something to show on a fresh clone."""
import json

import pytest

import app as dashboard
from sdpg.published import SCIENCE_DIR, first_look, is_published, load_published, published_choices
from lab.overlay import overlay_figure, summary_table_html


def test_every_variant_of_every_committed_file_is_offered():
    files = sorted(SCIENCE_DIR.glob("compare-*.json"))
    assert files, "docs/science holds the committed comparison results"
    expected = {f"science:{f.name}::{v}" for f in files for v in json.loads(f.read_text())["variants"]}
    assert {value for _, value in published_choices()} == expected
    assert first_look() == ["science:compare-reasoning.json::grpo", "science:compare-reasoning.json::sdpg"]


def test_a_committed_variant_loads_one_run_per_seed_with_its_recorded_curves():
    data = json.loads((SCIENCE_DIR / "compare-reasoning.json").read_text())
    runs = load_published("science:compare-reasoning.json::sdpg-nogate")
    assert [r["seed"] for r in runs] == data["seeds"]
    run = runs[1]
    assert run["method"] == "sdpg" and run["config"]["loss"]["gate"] is False
    assert run["config"]["data"]["task"] == "reasoning"
    curve = [c for c in data["curves"] if c["variant"] == "sdpg-nogate" and c["seed"] == run["seed"]]
    evals = [e for e in data["evals"] if e["variant"] == "sdpg-nogate" and e["seed"] == run["seed"]]
    by_step = {m["step"]: m for m in run["metrics"]}
    assert [by_step[c["step"]]["reward/mean"] for c in curve] == [c["reward/mean"] for c in curve]
    assert [by_step[e["step"]]["eval/pass@1"] for e in evals] == [e["eval/pass@1"] for e in evals]
    assert run["summary"] == next(r["summary"] for r in data["runs"]
                                  if r["variant"] == "sdpg-nogate" and r["seed"] == run["seed"])


def test_the_first_look_draws_a_comparison_with_its_summary():
    runs = [r for choice in first_look() for r in load_published(choice)]
    fig = overlay_figure(runs)
    assert {t.name for t in fig.data} == {r["name"] for r in runs} and len(runs) == 10
    assert "reasoning · grpo s0" in summary_table_html(runs)


def test_the_compare_tab_offers_committed_results_next_to_run_directories(tmp_path):
    ctl = dashboard.Controller(tmp_path)
    choices = dashboard.comparable_runs(ctl)
    assert all(is_published(value) for _, value in choices)
    assert len(dashboard.load_comparable(ctl, first_look()[0])) == 5
    with pytest.raises(ValueError, match="no variant 'nope'"):
        load_published("science:compare-reasoning.json::nope")
    with pytest.raises(ValueError, match="not in"):
        load_published("science:compare-none.json::grpo")
