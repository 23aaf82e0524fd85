"""The committed comparison results load as runs, so the Compare tab has something to show on a fresh clone."""
import json

import pytest

import app as dashboard
from sdpg.published import FIRST_LOOK_TASK, SCIENCE_DIR, contents, first_look, is_published, load_published, published_choices
from lab.overlay import overlay_figure, summary_table_html


def test_every_variant_of_every_committed_file_is_offered():
    files = sorted(SCIENCE_DIR.glob("compare-*.json")) + sorted(SCIENCE_DIR.glob("tuned-*.json"))
    assert files, "docs/science holds the committed comparison results"
    expected = {f"science:{f.name}::{v}" for f in files for v in contents(json.loads(f.read_text()))["variants"]}
    assert {value for _, value in published_choices()} == expected
    assert len(first_look()) == 2 and set(first_look()) <= expected


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
    assert {t.name for t in fig.data} == {r["name"] for r in runs} and len(runs) >= 10
    assert runs[0]["name"] in summary_table_html(runs) and {r["method"] for r in runs} == {"grpo", "sdpg"}


def test_the_compare_tab_offers_committed_results_next_to_run_directories(tmp_path):
    ctl = dashboard.Controller(tmp_path)
    choices = dashboard.comparable_runs(ctl)
    assert all(is_published(value) for _, value in choices)
    assert len(dashboard.load_comparable(ctl, first_look()[0])) == len(load_published(first_look()[0])) >= 5
    with pytest.raises(ValueError, match="no variant 'nope'"):
        load_published("science:compare-reasoning.json::nope")
    with pytest.raises(ValueError, match="not in"):
        load_published("science:compare-none.json::grpo")


def _tuned(confirm: bool) -> dict:
    """A tuned comparison's file as experiments.tune writes it: Stage 1 runs are never offered, Stage 2's are."""
    tags = {"grpo-anchor": "grpo-anchor-lr1e-05", "sdpg": "sdpg-lr3e-05"}
    variants = {tag: {"settings": {"loss.method": name.split("-")[0], "optim.lr": float(tag.rpartition("lr")[2])}}
                for name, tag in tags.items()}
    runs = [{"variant": tag, "seed": seed, "status": "finished", "summary": {"final_pass@1": 0.2}}
            for tag in tags.values() for seed in (200, 201)]
    evals = [{"variant": tag, "seed": seed, "step": 0, "eval/pass@1": 0.15} for tag in tags.values() for seed in (200, 201)]
    return {"meta": {"task": FIRST_LOOK_TASK}, "context": "full", "selection": {},
            "confirm": {"baseline": "grpo-anchor", "variants": {n: {"lr": float(t.rpartition("lr")[2])}
                                                                for n, t in tags.items()}} if confirm else None,
            "variants": variants if confirm else {}, "confirm_runs": runs if confirm else [],
            "tune_runs": [{"variant": "sdpg-lr1e-04", "seed": 100}], "curves": [],
            "evals": evals + [{"variant": "sdpg-lr1e-04", "seed": 100, "step": 0, "eval/pass@1": 0.1, "stage": "tune"}]}


def test_the_first_look_is_the_tuned_comparison_once_stage_2_has_run(tmp_path):
    (tmp_path / "compare-reasoning.json").write_text((SCIENCE_DIR / "compare-reasoning.json").read_text())
    tuned = tmp_path / f"tuned-{FIRST_LOOK_TASK}.json"
    tuned.write_text(json.dumps(_tuned(confirm=False)))
    assert first_look(tmp_path) == ["science:compare-reasoning.json::grpo", "science:compare-reasoning.json::sdpg"]
    assert not [v for _, v in published_choices(tmp_path) if "tuned" in v]
    tuned.write_text(json.dumps(_tuned(confirm=True)))
    assert first_look(tmp_path) == [f"science:{tuned.name}::grpo-anchor-lr1e-05", f"science:{tuned.name}::sdpg-lr3e-05"]
    assert {v for _, v in published_choices(tmp_path) if "tuned" in v} == set(first_look(tmp_path))
    runs = load_published(first_look(tmp_path)[1], tmp_path)
    assert [r["seed"] for r in runs] == [200, 201]
    assert runs[0]["config"]["optim"]["lr"] == 3e-05 and runs[0]["metrics"] == [{"step": 0, "eval/pass@1": 0.15}]
