"""One vocabulary of run statuses: the engine defines them and what each allows; the page and the views read it."""
import pytest

import app as dashboard
from conftest import tiny_config
from fixtures.waiting import wait_for
from lab.status import STATUS_COLORS, status_html
from lab.viewmodel import RunView
from sdpg.run import ACTIONS, LIFECYCLE, STATUSES, TERMINAL, RunHandle, replay_status


def test_every_status_has_its_actions_and_its_colour_and_nothing_else_does():
    assert set(ACTIONS) == set(STATUSES) == set(STATUS_COLORS)
    assert set().union(*ACTIONS.values()) == set(dashboard.RUN_BUTTONS)
    assert set(LIFECYCLE.values()) <= set(STATUSES)


def test_a_recording_spells_each_status_one_way():
    assert replay_status([{"event": "start"}, {"event": "finished"}]) == ("finished", None)
    assert replay_status([{"event": "start"}, {"event": "stopped"}]) == ("stopped", None)
    for other_spelling in ("finish", "stop"):
        assert replay_status([{"event": "start"}, {"event": other_spelling}]) == ("incomplete", None)
    with pytest.raises(ValueError, match="'finish' is not a run status"):
        status_html("finish")


@pytest.mark.parametrize("status", STATUSES)
def test_the_page_enables_exactly_the_buttons_the_status_allows(status):
    states = dashboard.button_states(status)
    assert {name for name, update in zip(dashboard.RUN_BUTTONS, states) if update["interactive"]} == set(ACTIONS[status])


def test_the_handle_reports_its_status_and_allowed_actions_through_a_real_run(tiny_model_dir, tmp_path):
    handle = RunHandle(tiny_config(tiny_model_dir, tmp_path / "run", run__steps=40))
    view = RunView(handle=handle)
    assert handle.allowed_actions() == ACTIONS["created"] == ("stop",)
    handle.start()
    wait_for(lambda: handle.step >= 1, timeout=120, what="a first step")
    assert handle.status == "running" and "pause" in view.allowed_actions()
    handle.pause()
    wait_for(lambda: handle.status == "paused", timeout=60, what="paused")
    assert handle.allowed_actions() == ("resume", "stop", "checkpoint")
    # asked between two steps, on the training thread: the stop is requested but the thread has not ended
    status, allowed = handle.call_between_steps(lambda _: (handle.stop(wait=False), handle.status,
                                                           handle.allowed_actions())[1:], timeout=60)
    assert (status, allowed) == ("stopping", ())
    handle.join(timeout=60)
    assert handle.status == "stopped" and handle.status in TERMINAL and handle.allowed_actions() == ("start",)
    assert replay_status(handle.records.events()) == ("stopped", None)


def test_the_page_refuses_an_action_its_status_does_not_allow(tiny_model_dir, tmp_path):
    ctl = dashboard.Controller(tmp_path / "runs")
    for action in ("pause", "resume", "stop", "checkpoint"):
        text, kind = getattr(ctl, action)()
        assert kind == "error" and text == f"Cannot {action} now: the run is idle (allowed: start)."
    assert ctl.allowed_actions() == ("start",)
