"""The columnar rollout store: round trip, crash safety, torn shards, the byte bound and old JSON-lines runs."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sdpg.record_store import INDEX_FILE, SHARD_DIR, TopK, shard_name
from sdpg.records import METRICS_FILE, ROLLOUTS_FILE, RecordStream
from tests.fixtures.records import make_group, make_long_group

ROOT = Path(__file__).resolve().parents[1]


def _same_response(mine: dict, theirs: dict) -> None:
    assert list(mine["tokens"]) == list(theirs["tokens"])
    for key in ("student_logp", "teacher_logp", "old_logp", "sampler_logp", "kl", "entropy"):
        assert np.allclose(np.asarray(mine[key], float), np.asarray(theirs[key], float), equal_nan=True), key
    for key in ("student_topk", "teacher_topk"):
        assert [[t for t, _ in row] for row in mine[key]] == [[t for t, _ in row] for row in theirs[key]]
        assert np.allclose([[p for _, p in row] for row in mine[key]], [[p for _, p in row] for row in theirs[key]],
                           atol=1e-3)  # float16 probabilities


def test_a_step_round_trips_through_its_shard_with_strings_stored_once(tmp_path):
    groups = [make_long_group(1, g, 300, group_size=4) for g in range(2)]
    live = RecordStream(tmp_path)
    live.emit_rollouts(1, groups)
    live.emit_rollouts(2, [make_long_group(2, 0, 300, group_size=4)])
    replay = RecordStream.open(tmp_path)
    assert replay.rollout_steps() == [1, 2]
    for stream in (live, replay):
        got = stream.rollouts(1)
        assert [g["group"] for g in got] == [0, 1] and got[1]["prompt"] == "question 1"
        for mine, theirs in zip(got[1]["responses"], groups[1]["responses"]):
            _same_response(mine, theirs)
            assert mine["advantage"] == theirs["advantage"] and mine["text"] == theirs["text"]
            assert isinstance(mine["student_topk"], TopK) and mine["kl"].dtype == np.float32
    vocab_lines = (tmp_path / SHARD_DIR / "vocab.jsonl").read_text().splitlines()
    strings = [s for line in vocab_lines for s in json.loads(line)["strings"]]
    assert len(strings) == len(set(strings)) <= 500  # each token string once for the whole run


def test_group_index_is_cheap_and_matches_the_records(tmp_path):
    stream = RecordStream(tmp_path)
    stream.emit_rollouts(3, [make_long_group(3, 0, 50, group_size=2)])
    (entry,) = RecordStream.open(tmp_path).group_index()
    r = stream.rollouts(3)[0]["responses"][1]
    assert entry["step"] == 3 and entry["group"] == 0 and entry["prompt"] == "question 0"
    summary = entry["responses"][1]
    assert summary["length"] == 50 and summary["kl_max"] == pytest.approx(float(r["kl"].max()))
    assert summary["kl_mean"] == pytest.approx(float(r["kl"].mean()), rel=1e-5)
    assert summary["text_head"] == r["text"][:300] and "tokens" not in summary and "kl" not in summary


def test_a_torn_shard_is_skipped_and_named(tmp_path):
    stream = RecordStream(tmp_path)
    for step in (1, 2, 3):
        stream.emit_rollouts(step, [make_long_group(step, 0, 200, group_size=2)])
    torn = tmp_path / SHARD_DIR / shard_name(2)
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])
    replay = RecordStream.open(tmp_path)
    assert replay.rollout_steps() == [1, 2, 3]
    assert replay.rollouts(2) == [] and len(replay.rollouts(3)[0]["responses"]) == 2
    assert replay.bad_line_count == 1 and str(torn) in replay.bad_lines[0] and "skipped" in replay.bad_lines[0]


def test_a_shard_renamed_but_not_indexed_is_found_on_open(tmp_path):
    stream = RecordStream(tmp_path)
    for step in (1, 2):
        stream.emit_rollouts(step, [make_group(step, 0)])
    index = tmp_path / SHARD_DIR / INDEX_FILE
    index.write_text(index.read_text().splitlines(keepends=True)[0])  # a kill between rename and index line
    replay = RecordStream.open(tmp_path)
    assert replay.rollout_steps() == [1, 2] and replay.rollouts(2)[0]["prompt"] == make_group(2, 0)["prompt"]


WRITER = """
import sys
from tests.fixtures.records import make_long_group
from sdpg.records import RecordStream
stream = RecordStream(sys.argv[1])
for step in range(1, 10_000):
    stream.emit_metrics(step, {"reward/mean": 0.5})
    stream.emit_rollouts(step, [make_long_group(step, g, 2048, group_size=4) for g in range(2)])
    print(step, flush=True)
"""


@pytest.mark.parametrize("delay", [0.05, 0.35, 0.7])
def test_a_writer_killed_mid_write_loses_at_most_the_step_being_written(tmp_path, delay):
    run = tmp_path / "run"
    log = open(tmp_path / "log", "w")
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(run)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len((tmp_path / "log").read_text().split()) < 2:
            time.sleep(0.02)
        time.sleep(delay)  # somewhere inside a later step's write
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    done = [int(x) for x in (tmp_path / "log").read_text().split()]
    assert len(done) >= 2, (tmp_path / "log").read_text()
    replay = RecordStream.open(run)
    steps = replay.rollout_steps()
    assert steps[: len(done)] == done and len(steps) <= len(done) + 1  # the step being written: whole or absent
    for step in steps:
        groups = replay.rollouts(step)
        assert len(groups) == 2 and all(len(r["tokens"]) == 2048 for g in groups for r in g["responses"])
    assert replay.bad_lines == []
    resumed = RecordStream(run)  # a resumed run clears the interrupted shard and writes on
    assert not list((run / SHARD_DIR).glob(".*.tmp"))
    resumed.emit_rollouts(steps[-1] + 1, [make_group(1, 0)])
    again = RecordStream.open(run)
    assert again.rollout_steps() == [*steps, steps[-1] + 1]
    new, old = again.rollouts(steps[-1] + 1)[0], again.rollouts(steps[0])[0]  # strings from both writers read back
    assert list(new["responses"][0]["tokens"]) == make_group(1, 0)["responses"][0]["tokens"]
    assert list(old["responses"][0]["tokens"]) == list(make_long_group(steps[0], 0, 2048, group_size=4)
                                                       ["responses"][0]["tokens"])
    assert again.bad_lines == []


def test_memory_holds_per_token_records_within_the_byte_budget(tmp_path):
    budget_mb = 1.0
    live = RecordStream(tmp_path, cache_mb=budget_mb)
    for step in range(1, 21):
        live.emit_rollouts(step, [make_long_group(step, 0, 1000, group_size=4)])  # ~0.35 MiB a step
        assert live.cache_bytes() <= budget_mb * 2**20
    assert live.rollout_steps() == list(range(1, 21))
    assert len(live.rollouts(1)[0]["responses"]) == 4  # dropped from memory, read back from its shard
    replay = RecordStream.open(tmp_path, cache_mb=budget_mb)
    for step in replay.rollout_steps():
        assert replay.rollouts(step)[0]["responses"][3]["tokens"].shape == (1000,)
        assert 0 < replay.cache_bytes() <= budget_mb * 2**20
    memory_only = RecordStream(None, cache_mb=budget_mb)  # no files: what the budget drops is gone
    for step in range(1, 21):
        memory_only.emit_rollouts(step, [make_long_group(step, 0, 1000, group_size=4)])
    assert memory_only.cache_bytes() <= budget_mb * 2**20 and 1 < len(memory_only.rollout_steps()) < 20
    assert memory_only.rollout_steps()[-1] == 20


def test_truncate_after_removes_newer_shards(tmp_path):
    s = RecordStream(tmp_path)
    for k in range(1, 5):
        s.emit_metrics(k, {"reward/mean": k / 10})
        s.emit_rollouts(k, [make_group(k, 0)])
    s.truncate_after(2)
    assert s.rollout_steps() == [1, 2] and not (tmp_path / SHARD_DIR / shard_name(3)).exists()
    s.emit_rollouts(3, [make_group(30, 0)])
    replay = RecordStream.open(tmp_path)
    assert replay.rollout_steps() == [1, 2, 3] and replay.rollouts(3)[0]["prompt"] == make_group(30, 0)["prompt"]


def _old_run(run_dir: Path, steps: int) -> list[dict]:
    """A run directory as the JSON-lines version wrote it: lists per token, [[token, prob], ...] top-k."""
    run_dir.mkdir()
    groups = []
    with open(run_dir / ROLLOUTS_FILE, "w") as f, open(run_dir / METRICS_FILE, "w") as m:
        for step in range(1, steps + 1):
            for g in range(2):
                group = make_group(step, g)
                group["responses"][0]["kl"][1] = None  # NaN was written as null
                groups.append(group)
                f.write(json.dumps(group) + "\n")
            m.write(json.dumps({"step": step, "reward/mean": 0.5}) + "\n")
        f.write('{"step": 9, "group": 0, "resp')  # a crash mid-line
    return groups


def test_an_old_json_lines_run_still_replays(tmp_path):
    old = _old_run(tmp_path / "old", 3)
    replay = RecordStream.open(tmp_path / "old")
    assert replay.rollout_steps() == [1, 2, 3] and replay.bad_lines == []
    got = replay.rollouts(2)
    assert [g["group"] for g in got] == [0, 1]
    want = old[2]["responses"]
    for mine, theirs in zip(got[0]["responses"], want):
        assert mine["advantage"] == theirs["advantage"]
        assert mine["student_topk"][3] == [(t, pytest.approx(p, abs=1e-3)) for t, p in theirs["student_topk"][3]]
        assert list(mine["tokens"]) == theirs["tokens"]
        assert np.allclose(mine["student_logp"], theirs["student_logp"], atol=1e-6)
    assert math.isnan(got[0]["responses"][0]["kl"][1])
    assert [e["step"] for e in replay.group_index()] == [1, 1, 2, 2, 3, 3]
    resumed = RecordStream(tmp_path / "old")  # resuming an old run: new steps go to shards, old ones stay
    resumed.truncate_after(2)
    resumed.emit_rollouts(3, [make_group(40, 0)])
    again = RecordStream.open(tmp_path / "old")
    assert again.rollout_steps() == [1, 2, 3] and again.rollouts(3)[0]["prompt"] == make_group(40, 0)["prompt"]
    assert again.rollouts(1)[1]["prompt"] == old[1]["prompt"]
