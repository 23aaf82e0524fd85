"""A race: two real runs that differ only in the method, steered together, viewed live and replayed."""
import json

import pytest

from conftest import tiny_config
from fixtures.waiting import wait_for
from lab.race import RaceView, race_curves, race_heatmaps, race_inspectors, race_status_html
from lab.widgets import RaceLiveView
from lab.explore import (filter_rows, prompt_across_steps_figure, prompt_choices, prompt_groups, prompt_steps_html,
                         rollout_table_html, table_rows)
from lab.export import export_html
from lab.overlay import config_diff
from lab.status import race_card_html
from sdpg.race import RACE_FILE, Race, race_configs, race_runs, race_status
from sdpg.records import RecordStream


def test_race_configs_differ_only_in_the_method_and_the_run_directory(tiny_model_dir, tmp_path):
    base = tiny_config(tiny_model_dir, "", optim__lr=3e-4, run__seed=5)
    a, b = race_configs(base, tmp_path / "race")
    diff = config_diff([a.to_dict(), b.to_dict()])
    assert set(diff) == {"loss.method", "run.run_dir"}
    assert (a.loss.method, b.loss.method) == ("grpo", "sdpg")
    assert a.run.run_dir == str(tmp_path / "race" / "grpo")
    with pytest.raises(ValueError, match="two different methods"):
        race_configs(base, tmp_path, ("sdpg", "sdpg"))
    with pytest.raises(ValueError, match="unknown method"):
        race_configs(base, tmp_path, ("grpo", "ppo9"))


def test_a_race_trains_both_runs_pauses_and_stops_them_together_and_replays(tiny_model_dir, tmp_path):
    race = Race(tiny_config(tiny_model_dir, "", run__steps=50), tmp_path / "race").start()
    try:
        wait_for(lambda: all(h.step >= 1 for h in race.handles) or any(h.status == "crashed" for h in race.handles),
                 timeout=120, what="a first step in both runs")
        assert [h.status for h in race.handles] != ["crashed"] * 2, [h.error for h in race.handles]
        race.pause()
        wait_for(lambda: [h.status for h in race.handles] == ["paused", "paused"], timeout=60, what="both paused")
        paused_at = [h.step for h in race.handles]
        live = RaceView.of(race)
        assert live.statuses() == ["paused", "paused"]
        assert [h.step for h in race.handles] == paused_at
        race.resume()
        wait_for(lambda: all(h.step > s for h, s in zip(race.handles, paused_at)), timeout=60, what="both resumed")
    finally:
        race.stop(wait=True, timeout=60)
    assert [h.status for h in race.handles] == ["stopped", "stopped"]
    assert json.loads((tmp_path / "race" / RACE_FILE).read_text())["methods"] == ["grpo", "sdpg"]

    replay = RaceView.of(tmp_path / "race")
    assert replay.methods == ["grpo", "sdpg"] and replay.statuses() == ["stopped", "stopped"]
    steps = replay.common_steps()
    assert steps and steps[0] >= 1
    figures = race_heatmaps(replay, steps[0], 0)
    assert [f.layout.title.text.split(" — ")[0] for f in figures] == ["GRPO", "SDPG"]
    assert all(f.data for f in figures)
    cards = race_inspectors(replay, steps[0], 0)
    prompts = [RecordStream.open(d).rollouts(steps[0])[0]["prompt"] for _, d in race_runs(tmp_path / "race")]
    assert prompts[0] == prompts[1], "both runs draw the same prompts at the same step"
    assert all(prompts[0][:10] in card for card in cards)
    names = {t.name for t in race_curves(replay).data}
    assert names == {"grpo", "sdpg"}
    assert "GRPO</b>: stopped" in race_status_html(replay)
    for method, run_dir in race_runs(tmp_path / "race"):
        replay_views_work(run_dir, method, steps)


def replay_views_work(run_dir, method: str, steps: list[int]) -> None:
    """A finished race's run opened in the page's Replay: the Across-steps table and prompt view, and the export."""
    import app as dashboard

    ctl = dashboard.Controller(run_dir.parent)
    assert ctl.open_replay(str(run_dir))[1] == "ok"
    index = ctl.stream().group_index()
    rows = table_rows(index)
    assert {r["step"] for r in rows} == set(ctl.stream().rollout_steps()) >= set(steps)
    assert filter_rows(rows, text=rows[0]["prompt"]) and "sdpg-table-row" in rollout_table_html(rows, len(rows))
    prompt = prompt_choices(index)[0][1]
    groups = prompt_groups(index, prompt)
    assert groups and prompt_across_steps_figure(groups).data and "sdpg-prompt-step" in prompt_steps_html(groups)
    page = export_html(ctl.stream(), steps[0])
    assert f"Rollout inspector — step {steps[0]}, group 0" in page and f"{method.upper()} · " in page


def test_the_race_status_is_the_more_active_run_then_the_worse_ending():
    assert race_status(["running", "paused"]) == "running"  # a pause shows once both runs have paused
    assert race_status(["paused", "paused"]) == "paused"
    assert race_status(["stopping", "paused"]) == "stopping"
    assert race_status(["loading", "running"]) == "running"
    assert race_status(["stopped", "running"]) == "running"
    assert race_status(["stopped", "crashed"]) == "crashed"
    assert race_status(["finished", "stopped"]) == "stopped"
    assert race_status(["finished", "finished"]) == "finished"
    with pytest.raises(ValueError, match="not run statuses"):
        race_status(["running", "idle"])
    runs = [{"method": "grpo", "status": "paused", "step": 7, "total": 40, "error": None},
            {"method": "sdpg", "status": "crashed", "step": 5, "total": 40, "error": "OSError: disk full\ntrace"}]
    card = race_card_html("crashed", runs, race_dir="runs/race-x")
    assert "RACE · GRPO vs SDPG · step 5 / 40" in card and ">CRASHED<" in card
    assert "The SDPG run crashed:</b> OSError: disk full<" in card and "trace" not in card


def test_a_directory_that_is_not_a_race_is_refused(tmp_path):
    with pytest.raises(ValueError, match="not a race directory"):
        RaceView.of(tmp_path)
    (tmp_path / RACE_FILE).write_text("{}")
    with pytest.raises(ValueError, match="not a valid race record"):
        RaceView.of(tmp_path)


def test_the_notebook_race_view_steers_both_runs_and_keeps_both_sides_on_one_step(tiny_model_dir, tmp_path):
    race = Race(tiny_config(tiny_model_dir, "", run__steps=40), tmp_path / "race").start()
    try:
        view = RaceLiveView(race)
        pause, resume, stop = view.buttons
        wait_for(lambda: all(h.step >= 1 for h in race.handles), timeout=120, what="a first step in both runs")
        pause.click()
        wait_for(lambda: [h.status for h in race.handles] == ["paused", "paused"], timeout=60, what="both paused")
        resume.click()
        wait_for(lambda: "paused" not in [h.status for h in race.handles], timeout=60, what="both resumed")
        stop.click()
        race.join(timeout=60)
    finally:
        race.stop(wait=True, timeout=60)
    assert [h.status for h in race.handles] == ["stopped", "stopped"]
    replay = RaceLiveView(tmp_path / "race")
    assert replay.buttons == [] and {t.name for t in replay.curves.data} == {"grpo", "sdpg"}
    left, right = replay.sides
    assert left.step.value is not None and left.step.value == right.step.value
    left.step.value = left.step.options[0]
    assert right.step.value == left.step.options[0]


def test_the_page_race_refuses_a_second_race_and_stops_with_the_server(tiny_model_dir, tmp_path):
    import app as dashboard

    ctl = dashboard.Controller(tmp_path / "runs")
    dashboard.build_app(ctl, base_config=tiny_config(tiny_model_dir, ""))
    cfg = tiny_config(tiny_model_dir, "", run__steps=500)
    idle = ctl.version()
    text, kind = ctl.races.start(cfg, "grpo", "sdpg")
    assert kind == "ok" and text.startswith("Race started: GRPO vs SDPG")
    try:
        wait_for(lambda: all(h.step >= 1 for h in ctl.races.race.handles), timeout=120, what="a step in both runs")
        card = ctl.status_card()  # the race is the page's training: its card, not "IDLE"
        assert "sdpg-race-card" in card and "RACE · GRPO vs SDPG · step " in card and "IDLE" not in card
        assert ctl.version() != idle
        assert ctl.races.start(cfg, "grpo", "rlsd") == ("A race is already running; stop it before starting another.",
                                                        "error")
        assert ctl.start(tiny_config(tiny_model_dir, "", run__steps=1))[1] == "ok"
        ctl.handle.join(timeout=120)
        card = ctl.status_card()  # the single run started later is the card; the active race is added under it
        assert card.index("FINISHED") < card.index("RACE · GRPO vs SDPG")
        assert ctl.open_replay(str(ctl.handle.run_dir))[1] == "ok"
        card = ctl.status_card()  # so is a replay's card
        assert card.index(">replay<") < card.index("RACE · GRPO vs SDPG")
        ctl.close_replay()
    finally:
        dashboard.shut_down(ctl)
    assert [h.status for h in ctl.races.race.handles] == ["stopped", "stopped"]
    assert "RACE" not in ctl.status_card(), "an ended race is not added under a later single run"
    assert ctl.races.act("pause") == ("No live race to pause.", "error")
    assert ctl.races.open(str(tmp_path / "elsewhere"))[1] == "error"
    race_dir = str(ctl.races.race.race_dir)
    assert ctl.races.open(race_dir) == (f"Opened race {race_dir} for browsing.", "ok")
    assert ctl.races.view.statuses() == ["stopped", "stopped"]
