import ast
import json
import math
from pathlib import Path

import pytest

from sdpg.run import LIFECYCLE, replay_status
from sdpg.records import EVENTS, EVENTS_FILE, METRICS_FILE, RecordStream

REPO = Path(__file__).resolve().parents[1]


def test_records_are_written_and_replayed(tmp_path):
    live = RecordStream(tmp_path)
    live.write_config({"loss": {"beta": 0.1}})
    live.emit_metrics(1, {"reward/mean": 0.5, "kl/distill_mean": math.nan})
    live.emit_rollouts(1, [{"group": 0, "prompt": "Q", "context": "H", "answer": "1", "responses": []},
                           {"group": 1, "prompt": "Q", "context": "H", "answer": "1",
                            "responses": [{"text": "x", "kl": [0.5, math.inf, -math.inf]}]}])
    live.emit_event("finished", step=1)
    replay = RecordStream.open(tmp_path)
    for stream in (live, replay):  # NaN/inf become None in memory as on disk, however deep
        assert stream.metrics()[0]["kl/distill_mean"] is None
        assert list(stream.rollouts(step=1)[1]["responses"][0]["kl"]) == pytest.approx([0.5, math.nan, math.nan], nan_ok=True)
    assert replay.metrics()[0]["reward/mean"] == 0.5
    assert replay.metrics()[0]["kl/distill_mean"] is None  # NaN never reaches the JSON files
    assert replay.rollouts(step=1)[0]["prompt"] == "Q" and replay.rollout_steps() == [1]
    assert replay.events()[-1]["event"] == "finished"
    assert replay.config() == {"loss": {"beta": 0.1}}


def test_refresh_tails_a_growing_run_and_waits_for_whole_lines(tmp_path):
    live = RecordStream(tmp_path)
    live.emit_metrics(1, {"reward/mean": 0.1})
    replay = RecordStream.open(tmp_path)
    live.emit_metrics(2, {"reward/mean": 0.2})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 3, "rew')  # a writer caught mid-line
    assert replay.refresh() == 1
    assert [m["step"] for m in replay.metrics()] == [1, 2]


def test_reopening_for_writing_keeps_history_and_drops_a_torn_line(tmp_path):
    first = RecordStream(tmp_path)
    first.emit_metrics(1, {"reward/mean": 0.1})
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 2, "rew')
    second = RecordStream(tmp_path)
    second.emit_metrics(2, {"reward/mean": 0.2})
    lines = (tmp_path / METRICS_FILE).read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert [m["step"] for m in second.metrics()] == [1, 2]


def test_truncate_after_drops_steps_a_resume_will_redo(tmp_path):
    s = RecordStream(tmp_path)
    for k in range(1, 5):
        s.emit_metrics(k, {"reward/mean": k / 10})
        s.emit_rollouts(k, [{"group": 0, "responses": []}])
    s.truncate_after(2)
    assert [m["step"] for m in s.metrics()] == [1, 2]
    assert RecordStream.open(tmp_path).rollout_steps() == [1, 2]


def test_open_rejects_a_directory_without_records(tmp_path):
    with pytest.raises(ValueError, match="holds no run records"):
        RecordStream.open(tmp_path)
    with pytest.raises(FileNotFoundError):
        RecordStream.open(tmp_path / "missing")


# ---------------- the event schema ----------------
def _emitted_event_names() -> set[str]:
    """Every event name the product passes to `emit_event` as a literal (a variable name, such as the run's final
    status, is followed to the literals assigned to it nearby: "finished" / "stopped")."""
    names = set()
    for path in [*(REPO / "sdpg").rglob("*.py"), REPO / "app.py", *(REPO / "lab").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "emit_event" and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant):
                    names.add(first.value)
    return names


def test_every_event_the_product_emits_is_in_the_schema():
    emitted = _emitted_event_names()
    assert len(emitted) >= 12 and emitted <= set(EVENTS), emitted - set(EVENTS)
    for name, event in EVENTS.items():
        assert event.meaning and all(event.fields.values()), name


def test_an_unknown_event_is_refused_and_nothing_is_written(tmp_path):
    stream = RecordStream(tmp_path)
    with pytest.raises(ValueError, match="unknown event 'finish'; known events: .*'finished'"):
        stream.emit_event("finish", step=1)
    events_file = tmp_path / EVENTS_FILE
    assert stream.events() == [] and (not events_file.exists() or events_file.read_text() == "")


def test_the_views_read_a_runs_status_from_the_schema_one_spelling_each():
    assert set(LIFECYCLE) == {name for name, e in EVENTS.items() if e.status}
    assert {"stop", "finish"}.isdisjoint(LIFECYCLE)
    assert replay_status([{"event": "start"}, {"event": "stopped", "step": 2}]) == ("stopped", None)
    assert replay_status([{"event": "start"}, {"event": "finish", "step": 2}]) == ("incomplete", None)
