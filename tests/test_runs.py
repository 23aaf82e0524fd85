"""Recorded runs found and loaded next to the record stream (`sdpg.runs`), from records written by `RecordStream`."""
import math
import os

from fixtures.records import write_run
from sdpg.records import METRICS_FILE
from sdpg.runs import find_runs, load_run, newest_runs, run_summary


def test_runs_are_found_down_to_a_depth_and_never_inside_checkpoints(tmp_path):
    finished = write_run(tmp_path / "b-finished", steps=2)
    crashed = write_run(tmp_path / "a-crashed", steps=3, crash_at=2)
    nested = write_run(tmp_path / "compare" / "grpo-s0", steps=1)
    (finished / "checkpoints" / "step_000002").mkdir(parents=True)
    (finished / "checkpoints" / "step_000002" / METRICS_FILE).write_text("")
    (tmp_path / "empty").mkdir()
    assert find_runs(tmp_path) == [crashed, finished, nested]
    assert find_runs(tmp_path, depth=1) == [crashed, finished]
    assert find_runs(tmp_path / "missing") == []
    os.utime(crashed, (1, 1))  # long ago
    assert newest_runs(tmp_path) == [finished, crashed]


def test_a_loaded_run_carries_its_status_from_its_events(tmp_path):
    finished = load_run(write_run(tmp_path / "done", steps=2))
    assert (finished["name"], finished["status"], finished["error"]) == ("done", "finished", None)
    assert finished["method"] == "sdpg" and finished["config"]["run"]["steps"] == 2
    assert [m["step"] for m in finished["metrics"]] == [1, 2]
    crashed = load_run(write_run(tmp_path / "broke", steps=3, crash_at=2))
    assert crashed["status"] == "crashed" and "fixture crash" in crashed["error"]


def test_run_summary_reads_final_best_and_late_training_means():
    metrics = [{"step": 0, "eval/pass@1": 0.9, "eval/teacher_pass@1": 0.5}]
    metrics += [{"step": k, "reward/mean": 0.1, "entropy/mean": float(k)} for k in range(1, 9)]
    metrics += [{"step": 4, "eval/pass@1": 0.4}, {"step": 8, "eval/pass@1": 0.3, "eval/teacher_pass@1": 0.7}]
    s = run_summary(metrics, steps=8)
    assert (s["final_pass@1"], s["best_pass@1"], s["teacher_pass@1"], s["entropy"]) == (0.3, 0.4, 0.7, 7.5)
    assert math.isnan(s["response_length"]) and "auc_pass@1" not in s  # the area is the comparison's statistic
