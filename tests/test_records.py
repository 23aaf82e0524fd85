import json
import math

import pytest

from sdpg.records import METRICS_FILE, RecordStream


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
