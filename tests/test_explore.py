"""Views across steps: the group index, the rollout table's filters and one prompt followed over steps."""
import numpy as np
import pytest

from fixtures.records import make_group, write_run
from lab.explore import (filter_rows, prompt_across_steps_figure, prompt_choices, prompt_groups, prompt_steps_html,
                         rollout_table_html, statuses, table_rows)
from sdpg.record_store import TEXT_HEAD, response_summary
from sdpg.records import RecordStream

FOLLOWED = "111+222="


def run_with_a_repeated_prompt(run_dir, steps=4):
    """A recorded run whose group 0 is the prompt FOLLOWED at every step (group 1 a fresh prompt each step)."""
    stream = RecordStream(run_dir)
    for step in range(1, steps + 1):
        followed = make_group(step, 0) | {"prompt": FOLLOWED}
        stream.emit_rollouts(step, [followed, make_group(step, 1)])
    return RecordStream.open(run_dir)


def test_group_index_keeps_scalars_and_kl_summaries_without_token_arrays(tmp_path):
    stream = RecordStream.open(write_run(tmp_path / "run", steps=3))
    index = stream.group_index()
    groups = stream.rollouts()
    assert len(index) == len(groups)
    for entry, group in zip(index, groups):
        assert set(entry) == {"step", "group", "prompt", "answer", "responses"}
        for summary, response in zip(entry["responses"], group["responses"], strict=True):
            assert set(summary) == {"reward", "correct", "status", "advantage", "gate", "length", "kl_mean", "kl_max",
                                    "text_head"}
            assert summary["kl_mean"] == pytest.approx(sum(response["kl"]) / len(response["kl"]))
            assert summary["kl_max"] == max(response["kl"]) and summary["length"] == len(response["tokens"])
            assert summary["advantage"] == response["advantage"] and summary["text_head"] == response["text"]


def test_response_summaries_read_numpy_token_arrays_and_cut_long_texts():
    response = make_group(1, 0)["responses"][0] | {"text": "x" * 1000, "kl": np.array([0.5, 2.0, 0.5]),
                                                   "tokens": np.arange(3)}
    summary = response_summary(response)
    assert summary["kl_mean"] == pytest.approx(1.0) and summary["kl_max"] == 2.0 and summary["length"] == 3
    assert summary["text_head"] == "x" * TEXT_HEAD
    assert response_summary({"text": "", "kl": []})["kl_mean"] is None


def test_table_filters_each_narrow_the_rows_as_named(tmp_path):
    rows = table_rows(RecordStream.open(write_run(tmp_path / "run", steps=4)).group_index())
    assert len(rows) == len(filter_rows(rows)) > 8
    right = filter_rows(rows, min_reward=1.0)
    assert right and all(r["reward"] >= 1.0 for r in right)
    assert all(r["reward"] <= 0.0 for r in filter_rows(rows, max_reward=0.0))
    assert len(right) + len(filter_rows(rows, max_reward=0.0)) == len(rows)
    positive = filter_rows(rows, advantage="positive")
    assert positive and all(r["advantage"] > 0 for r in positive)
    assert all(r["advantage"] == 0 for r in filter_rows(rows, advantage="zero"))
    assert {bool(r["gate"]) for r in filter_rows(rows, gate="on")} == {True}
    assert {bool(r["gate"]) for r in filter_rows(rows, gate="off")} == {False}
    assert statuses(rows) == ["any", "ok"] and filter_rows(rows, status="timeout") == []
    one = rows[5]
    found = filter_rows(rows, text=one["prompt"].upper())
    assert found and all(r["prompt"] == one["prompt"] for r in found)
    assert filter_rows(rows, text="no such text") == []
    with pytest.raises(ValueError, match="advantage filter"):
        filter_rows(rows, advantage="big")


def test_the_table_says_how_many_matched_and_escapes_text(tmp_path):
    rows = table_rows(RecordStream.open(write_run(tmp_path / "run", steps=2)).group_index())
    rows[0]["text_head"] = "<script>alert(1)</script>"
    page = rollout_table_html(rows, total=len(rows), limit=3)
    assert f"{len(rows)} of {len(rows)} recorded responses match, the first 3 shown" in page
    assert page.count("sdpg-table-row") == 3
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_one_prompt_across_steps_in_step_order(tmp_path):
    stream = run_with_a_repeated_prompt(tmp_path / "run")
    index = stream.group_index()
    assert prompt_choices(index)[0] == (f"{FOLLOWED} (4 steps)", FOLLOWED)
    groups = prompt_groups(index, FOLLOWED)
    assert [g["step"] for g in groups] == [1, 2, 3, 4]
    fig = prompt_across_steps_figure(groups)
    points = sum(len(t.x) for t in fig.data if t.name in ("right answer", "wrong answer"))
    assert points == sum(len(g["responses"]) for g in groups)
    pass_rate = next(t for t in fig.data if t.name == "pass rate")
    assert list(pass_rate.y) == [sum(r["correct"] for r in g["responses"]) / len(g["responses"]) for g in groups]
    page = prompt_steps_html(groups)
    assert page.count("class='sdpg-prompt-step'") == 4 and page.index("step 1") < page.index("step 4")
