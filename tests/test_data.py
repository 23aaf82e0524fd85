"""Tests for prompt rows and reading / writing them in verl's file layout."""
import json

import polars as pl
import pytest

from sdpg.data import (STUDENT_TEMPLATE, TEACHER_CONTEXT_TOKEN, DataError, PromptRow, convert_dapo_rows,
                       fill_template, load_rows, teacher_context, write_rows)


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _chat(content, system=None):
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": content}]


def _good(i):
    return {"data_source": "toy", "prompt": _chat(f"{i}+1=?{TEACHER_CONTEXT_TOKEN} hint: {i + 1}"),
            "reward_model": {"style": "rule", "ground_truth": str(i + 1)}}


ROWS = [
    PromptRow(prompt="1+1=?", context="\nanswer: 2", answer="2", data_source="toy"),
    PromptRow(prompt="What is $\\frac{1}{2}$ of 8?", context="", answer="4", data_source=""),
    PromptRow(prompt="ünïcode ≤ 3", context=" [Hint] 3", answer="3", data_source="aime24"),
]


def test_prompt_row_splits_at_the_sentinel():
    row = PromptRow.from_text(f"Q?{TEACHER_CONTEXT_TOKEN} hint", answer="7")
    assert (row.prompt, row.context, row.teacher_prompt, row.to_text()) == (
        "Q?", " hint", "Q? hint", f"Q?{TEACHER_CONTEXT_TOKEN} hint")


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".json"])
def test_write_then_load_round_trips(tmp_path, suffix):
    path = write_rows(ROWS, tmp_path / "sub" / f"rows{suffix}")
    loaded = load_rows(path)
    assert loaded.rows == ROWS
    assert loaded.skipped == 0


def test_written_parquet_has_verl_layout(tmp_path):
    frame = pl.read_parquet(write_rows(ROWS[:1], tmp_path / "rows.parquet"))
    record = frame.row(0, named=True)
    assert record["prompt"] == [{"role": "user", "content": f"1+1=?{TEACHER_CONTEXT_TOKEN}\nanswer: 2"}]
    assert record["reward_model"]["ground_truth"] == "2"
    assert record["data_source"] == "toy"


def test_load_jsonl_with_chat_messages_plain_strings_and_numbers(tmp_path):
    path = _write_jsonl(tmp_path / "mixed.jsonl", [
        {"prompt": _chat(f"Q1{TEACHER_CONTEXT_TOKEN}C1", system="Be brief."), "reward_model": {"ground_truth": 5}},
        {"prompt": "Q2", "reward_model": {"ground_truth": "x=2"}, "data_source": "src"},
        {"prompt": [{"role": "user", "content": "old"}, {"role": "assistant", "content": "A"},
                    {"role": "user", "content": "Q3"}], "reward_model": {"ground_truth": 0.5}},
    ])
    assert load_rows(path).rows == [
        PromptRow(prompt="Be brief.\n\nQ1", context="C1", answer="5"),
        PromptRow(prompt="Q2", context="", answer="x=2", data_source="src"),
        PromptRow(prompt="Q3", context="", answer="0.5"),
    ]


def test_load_parquet_written_by_polars_directly(tmp_path):
    path = tmp_path / "direct.parquet"
    pl.DataFrame([_good(i) for i in range(3)]).write_parquet(path)
    rows = load_rows(path).rows
    assert [(r.prompt, r.context, r.answer) for r in rows] == [(f"{i}+1=?", f" hint: {i + 1}", str(i + 1)) for i in range(3)]


def test_flat_ground_truth_is_accepted_without_reward_model(tmp_path):
    path = _write_jsonl(tmp_path / "flat.jsonl", [{"prompt": "Q", "answer": 12}, {"prompt": "R", "ground_truth": "3"}])
    assert [r.answer for r in load_rows(path).rows] == ["12", "3"]


BAD_ROWS = [
    ({"prompt": "Q"}, "reward_model.ground_truth is missing"),
    ({"prompt": "Q", "reward_model": {"style": "rule"}}, "reward_model.ground_truth is missing"),
    ({"prompt": "Q", "reward_model": "7"}, "reward_model must be an object"),
    ({"prompt": "Q", "reward_model": {"ground_truth": [1, 2]}}, "reward_model.ground_truth must be a string or a number"),
    ({"prompt": "Q", "reward_model": {"ground_truth": " "}}, "reward_model.ground_truth is empty"),
    ({"reward_model": {"ground_truth": "1"}}, "prompt is missing"),
    ({"prompt": 5, "reward_model": {"ground_truth": "1"}}, "prompt must be a string or a list of chat messages"),
    ({"prompt": [{"role": "assistant", "content": "hi"}], "reward_model": {"ground_truth": "1"}}, "prompt has no user message"),
    ({"prompt": [{"role": "user"}], "reward_model": {"ground_truth": "1"}}, "prompt[0] must be a message"),
    ({"prompt": f"{TEACHER_CONTEXT_TOKEN}only context", "reward_model": {"ground_truth": "1"}}, "prompt is empty"),
    ({"prompt": "Q", "reward_model": {"ground_truth": "1"}, "data_source": 3}, "data_source must be a string"),
    (["not", "an", "object"], "row must be an object"),
]


@pytest.mark.parametrize("bad, message", BAD_ROWS)
def test_bad_row_error_names_file_row_and_field(tmp_path, bad, message):
    path = _write_jsonl(tmp_path / "train.jsonl", [_good(0), _good(1), bad, _good(3)])
    with pytest.raises(DataError) as info:
        load_rows(path)
    assert str(info.value).startswith(f"{path} row 2 (line 3): {message}")


@pytest.mark.parametrize("bad, message", BAD_ROWS)
def test_skip_bad_rows_keeps_the_rest_and_counts(tmp_path, bad, message):
    path = _write_jsonl(tmp_path / "train.jsonl", [_good(0), _good(1), bad, _good(3)])
    loaded = load_rows(path, skip_bad_rows=True)
    assert [r.answer for r in loaded.rows] == ["1", "2", "4"]
    assert loaded.skipped == 1
    assert loaded.problems[0].startswith(f"{path} row 2 (line 3): {message}")


def test_invalid_json_line_is_a_bad_row_and_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(_good(0)) + "\n\n{not json\n" + json.dumps(_good(2)) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 1 \(line 3\): not valid JSON"):
        load_rows(path)
    loaded = load_rows(path, skip_bad_rows=True)
    assert ([r.answer for r in loaded.rows], loaded.skipped) == (["1", "3"], 1)


def test_parquet_bad_rows_are_named_and_skippable(tmp_path):
    path = tmp_path / "train.parquet"
    records = [_good(0), _good(1), _good(2)]
    records[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    pl.DataFrame(records).write_parquet(path)
    with pytest.raises(DataError, match=r"train.parquet row 1: reward_model.ground_truth is missing"):
        load_rows(path)
    loaded = load_rows(path, skip_bad_rows=True)
    assert ([r.answer for r in loaded.rows], loaded.skipped) == (["1", "3"], 1)


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q"}, {"prompt": "R"}])
    with pytest.raises(DataError, match="no usable rows"):
        load_rows(path, skip_bad_rows=True)


@pytest.mark.parametrize("name, content, message", [
    ("missing.jsonl", None, "no such file"),
    ("rows.csv", b"a,b\n", "unsupported file type '.csv'"),
    ("empty.jsonl", b"", "file is empty"),
    ("blank.jsonl", b"\n\n", "file has no rows"),
    ("corrupt.parquet", b"this is not parquet", "cannot read as parquet"),
    ("latin1.jsonl", "{\"prompt\": \"caf\xe9\"}\n".encode("latin-1"), "cannot read as UTF-8"),
    ("array.json", b"[{\"prompt\": 1,", "not valid JSON"),
])
def test_unusable_files_raise_data_error(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_rows(path)


def test_empty_parquet_is_an_error(tmp_path):
    path = tmp_path / "empty.parquet"
    pl.DataFrame([_good(0)]).head(0).write_parquet(path)
    with pytest.raises(DataError, match="file has no rows"):
        load_rows(path)


def test_json_array_file_loads(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([_good(0), _good(1)]), encoding="utf-8")
    assert [r.answer for r in load_rows(path).rows] == ["1", "2"]


def test_write_rows_rejects_nothing_and_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="no rows"):
        write_rows([], tmp_path / "x.parquet")
    with pytest.raises(DataError, match="unsupported"):
        write_rows(ROWS, tmp_path / "x.txt")


# Paper Fig. 4, copied from the paper's figure (SPEC.md), not from the code under test.
FIG4_STUDENT = """Solve the following math problem step by step. Present your final answer inside \\boxed{}, for example \\boxed{42}.
What is 2+2?
Remember to put your final answer inside \\boxed{}."""
FIG4_CONTEXT = """
[Hint] The correct answer is 4. A common way to solve this is:
Add the two numbers.
[Instruction] If possible, derive the answer 4 using an alternative, equally rigorous mathematical approach (e.g., algebraic vs geometric, or different substitution). If no alternative exists, articulate the standard approach with exceptional clarity. Do NOT state that you were given the answer or reference."""


def test_templates_fill_placeholders_and_keep_other_braces():
    assert fill_template(STUDENT_TEMPLATE, question="Find {x}: $x^{2}=4$") == FIG4_STUDENT.replace(
        "What is 2+2?", "Find {x}: $x^{2}=4$")
    assert teacher_context("4", "Add the two numbers.") == FIG4_CONTEXT
    assert teacher_context("4") == FIG4_CONTEXT.replace(" A common way to solve this is:\nAdd the two numbers.", "")


def test_convert_dapo_rows_writes_the_paper_prompts_word_for_word(tmp_path):
    source = _write_jsonl(tmp_path / "dapo.jsonl", [{"question": "What is 2+2?", "answer": 4,
                                                      "solution": "Add the two numbers."}])
    (row,) = convert_dapo_rows(source, tmp_path / "out.parquet").rows
    assert row.prompt == FIG4_STUDENT
    assert row.teacher_prompt == FIG4_STUDENT + FIG4_CONTEXT
    # on disk the sentinel sits between the student's last line and the hint, as in Fig. 4
    assert load_rows(tmp_path / "out.parquet").rows[0].to_text() == (
        FIG4_STUDENT + TEACHER_CONTEXT_TOKEN + FIG4_CONTEXT)


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_convert_dapo_rows(tmp_path, suffix):
    source = _write_jsonl(tmp_path / "dapo.jsonl", [
        {"question": "What is 2+2?", "answer": 4, "solution": "Add."},
        {"prompt": "What is 3+3?", "answer": "6", "solution": None, "data_source": "aime"},
    ])
    out = tmp_path / f"out{suffix}"
    written = convert_dapo_rows(source, out)
    rows = load_rows(out).rows
    assert rows == written.rows
    assert rows[0] == PromptRow(prompt=fill_template(STUDENT_TEMPLATE, question="What is 2+2?"),
                                context=teacher_context("4", "Add."), answer="4", data_source="dapo_math")
    assert rows[1].context == teacher_context("6")
    assert rows[1].data_source == "aime"
    assert rows[1].teacher_prompt.endswith("[Hint] The correct answer is 6.\n[Instruction] If possible, derive the "
                                           "answer 6 using an alternative, equally rigorous mathematical approach "
                                           "(e.g., algebraic vs geometric, or different substitution). If no "
                                           "alternative exists, articulate the standard approach with exceptional "
                                           "clarity. Do NOT state that you were given the answer or reference.")


def test_convert_dapo_rows_names_bad_rows(tmp_path):
    source = _write_jsonl(tmp_path / "dapo.jsonl", [{"question": "Q", "answer": 1}, {"question": "Q2"}])
    with pytest.raises(DataError, match=r"dapo.jsonl row 1 \(line 2\): answer is missing"):
        convert_dapo_rows(source, tmp_path / "out.parquet")
    written = convert_dapo_rows(source, tmp_path / "out.parquet", skip_bad_rows=True)
    assert (len(written.rows), written.skipped) == (1, 1)
