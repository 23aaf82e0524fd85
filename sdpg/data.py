"""Prompt rows with privileged context: the one data format every method reads.

Design choices:
- A row keeps the student's text and the teacher's privileged context apart. On disk (verl's layout,
  as in the authors' fork) they share one string split by `TEACHER_CONTEXT_TOKEN`: the student sees the
  text before it, the teacher sees the student text followed by the context.
- Rows are frozen dataclasses. `render_prompts` turns their texts into model input through the tokenizer's
  chat template (raw text without one), here beside the rows so every reader renders the same way.
- Files: `.parquet` is read with polars. JSON lines (`.jsonl`, `.json`) are decoded one line at a time
  with the standard `json` module, because polars' ndjson reader merges a column whose rows differ
  in type into JSON text: one ill-typed row would make every row look bad, and a file mixing plain
  and chat-message prompts would lose its messages. A `.json` file holding one array of rows works too.
- Each row is checked on its own, so an error names the file, the row (0-based; the line too for
  JSON lines) and the field, and `skip_bad_rows` can drop just that row and count it. Nothing from a
  reader surfaces raw: every failure is a `DataError`.
- The gold answer is `reward_model.ground_truth` (verl). Only when a row has no `reward_model` at all,
  a top-level `ground_truth` or `answer` is accepted, so flat hand-written files load too.
- Templates fill `{question}`, `{answer}` and `{solution}` and leave every other brace alone, so a
  template can say `\\boxed{}` without escaping.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import polars as pl
from transformers import PreTrainedTokenizerBase

TEACHER_CONTEXT_TOKEN = "[TEACHER_CONTEXT_TOKEN]"


@dataclass(frozen=True)
class PromptRow:
    """One problem: what the student sees, what only the teacher sees, and the verifier's gold answer."""

    prompt: str
    """student text (the part before the sentinel)"""
    context: str
    """privileged context only the teacher sees ("" when the row has none)"""
    answer: str
    """ground truth handed to the verifier (e.g. "579")"""
    data_source: str = ""
    """where the row comes from (e.g. "embedded/add", "aime24"), kept for per-source metrics"""

    @property
    def teacher_prompt(self) -> str:
        """The teacher's text: the student text followed by the privileged context."""
        return self.prompt + self.context

    @classmethod
    def from_text(cls, text: str, answer: str, data_source: str = "") -> "PromptRow":
        """Split a combined `student[TEACHER_CONTEXT_TOKEN]context` string (no sentinel: no context)."""
        student, _, context = text.partition(TEACHER_CONTEXT_TOKEN)
        return cls(prompt=student, context=context, answer=answer, data_source=data_source)

    def to_text(self) -> str:
        """The combined on-disk string, inverse of `from_text`."""
        return self.prompt + TEACHER_CONTEXT_TOKEN + self.context if self.context else self.prompt


def render_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], *, enable_thinking: bool = False) -> list[str]:
    """Each text as a single user message through the chat template, ready for generation.

    A tokenizer without a chat template gets the raw texts. `enable_thinking` reaches templates that
    read it (Qwen3's), and is left out for the others.
    """
    template = tokenizer.chat_template
    if not template:
        return list(texts)
    extra = {"enable_thinking": enable_thinking} if "enable_thinking" in str(template) else {}
    if not texts:
        return []
    conversations = [[{"role": "user", "content": text}] for text in texts]
    return tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True, **extra)


# Paper Fig. 4, word for word: the student sees the first three lines, the teacher those followed by the
# privileged context (the on-disk sentinel sits between them).
STUDENT_TEMPLATE = (
    "Solve the following math problem step by step. Present your final answer inside \\boxed{}, "
    "for example \\boxed{42}.\n"
    "{question}\n"
    "Remember to put your final answer inside \\boxed{}."
)
"""the paper's student prompt (Fig. 4); `{question}` is filled in"""
TEACHER_INSTRUCTION = (
    "[Instruction] If possible, derive the answer {answer} using an alternative, equally rigorous mathematical "
    "approach (e.g., algebraic vs geometric, or different substitution). If no alternative exists, articulate the "
    "standard approach with exceptional clarity. Do NOT state that you were given the answer or reference."
)
"""the paper's instruction to the teacher not to reveal its hint (Fig. 4)"""
TEACHER_TEMPLATE = (
    "\n[Hint] The correct answer is {answer}. A common way to solve this is:\n"
    "{solution}\n" + TEACHER_INSTRUCTION
)
"""the paper's privileged context (Fig. 4, appended to the student prompt); `{answer}`, `{solution}` filled in"""
TEACHER_TEMPLATE_NO_SOLUTION = "\n[Hint] The correct answer is {answer}.\n" + TEACHER_INSTRUCTION
"""the privileged context for problems that come without a worked solution (ours: Fig. 4 without the solution)"""

_PLACEHOLDER = re.compile(r"\{(question|answer|solution)\}")
_JSON_SUFFIXES = (".jsonl", ".json")
SUFFIXES = (".parquet", *_JSON_SUFFIXES)


class DataError(ValueError):
    """A data file or row that cannot be used; the message names the file, and the row when there is one."""


class _BadRow(Exception):
    """What is wrong with one row (the caller adds the file and row)."""


@dataclass(frozen=True)
class LoadedRows:
    """The usable rows of a file and what was skipped."""

    rows: list[PromptRow]
    """rows in file order, bad ones left out"""
    skipped: int
    """number of bad rows left out (always 0 unless `skip_bad_rows`)"""
    problems: tuple[str, ...] = ()
    """one message per skipped row, e.g. "data/train.jsonl row 17: reward_model.ground_truth is missing" """
    where: tuple[str, ...] = ()
    """per kept row, where it is in the file, e.g. "row 3 (line 4)" (empty for generated rows)"""


def fill_template(template: str, **values: str) -> str:
    """Replace `{question}`, `{answer}`, `{solution}` in one pass; other braces stay as they are."""
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def teacher_context(answer: str, solution: str = "", *, template: str = TEACHER_TEMPLATE,
                    template_no_solution: str = TEACHER_TEMPLATE_NO_SOLUTION) -> str:
    """The privileged context for one problem: answer and solution, or the answer alone."""
    if solution.strip():
        return fill_template(template, answer=answer, solution=solution.strip())
    return fill_template(template_no_solution, answer=answer)


def load_rows(path: str | Path, *, skip_bad_rows: bool = False) -> LoadedRows:
    """Read PromptRows from a `.parquet`, `.jsonl` or `.json` file in verl's layout.

    A row has `prompt` (chat messages `[{"role": ..., "content": ...}]`, whose last user message is
    the text and whose system message, if any, goes before it with a blank line; or a plain string),
    `reward_model.ground_truth` (string or number) and optionally `data_source`. The text is split
    into student prompt and teacher context at `TEACHER_CONTEXT_TOKEN`.
    A bad row raises `DataError`, or with `skip_bad_rows` is left out and counted.
    """
    return _convert(Path(path), _row_from_verl, skip_bad_rows)


def write_rows(rows: list[PromptRow], path: str | Path) -> Path:
    """Write rows in verl's layout (parquet, or JSON lines for `.jsonl` / `.json`); `load_rows` reads them back."""
    path = Path(path)
    _check_suffix(path)
    if not rows:
        raise ValueError(f"write_rows: no rows to write to {path}")
    schema = {
        "data_source": pl.String,
        "prompt": pl.List(pl.Struct({"role": pl.String, "content": pl.String})),
        "reward_model": pl.Struct({"style": pl.String, "ground_truth": pl.String}),
    }
    records = [{"data_source": r.data_source,
                "prompt": [{"role": "user", "content": r.to_text()}],
                "reward_model": {"style": "rule", "ground_truth": r.answer}} for r in rows]
    frame = pl.DataFrame(records, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_ndjson(path)
    return path


def convert_dapo_rows(path_in: str | Path, path_out: str | Path, *, student_template: str = STUDENT_TEMPLATE,
                      teacher_template: str = TEACHER_TEMPLATE,
                      teacher_template_no_solution: str = TEACHER_TEMPLATE_NO_SOLUTION,
                      data_source: str = "dapo_math", skip_bad_rows: bool = False) -> LoadedRows:
    """Turn DAPO-Math-style rows into our layout with the paper's templates, and write them.

    An input row has the problem text in `question` (or a string `prompt`), `answer` (string or
    number) and optionally `solution`; its own `data_source` wins over the `data_source` argument.
    Returns the rows written.
    """
    def build(record: Any) -> PromptRow:
        record = _as_mapping(record)
        question = record.get("question", record.get("prompt"))
        if question is None:
            raise _BadRow("question is missing (expected `question` or a string `prompt`)")
        if not isinstance(question, str) or not question.strip():
            raise _BadRow(f"question must be a non-empty string, got {_describe(question)}")
        if TEACHER_CONTEXT_TOKEN in question:
            raise _BadRow(f"question holds {TEACHER_CONTEXT_TOKEN}; the teacher context is built from answer and "
                          f"solution")
        answer = _answer_text(record.get("answer"), "answer")
        solution = record.get("solution")
        if solution is not None and not isinstance(solution, str):
            raise _BadRow(f"solution must be a string, got {_describe(solution)}")
        context = teacher_context(answer, solution or "", template=teacher_template,
                                  template_no_solution=teacher_template_no_solution)
        return PromptRow(prompt=fill_template(student_template, question=question), context=context,
                         answer=answer, data_source=_source(record) or data_source)

    loaded = _convert(Path(path_in), build, skip_bad_rows)
    write_rows(loaded.rows, path_out)
    return loaded


def _convert(path: Path, build: Callable[[Any], PromptRow], skip_bad_rows: bool) -> LoadedRows:
    """Build a row from every record of a file, failing or skipping (and counting) the bad ones."""
    rows, problems, kept = [], [], []
    for where, record in _read_records(path):
        try:
            rows.append(_check_unicode(build(record)))
            kept.append(where)
        except _BadRow as e:
            message = f"{path} {where}: {e}"
            if not skip_bad_rows:
                raise DataError(message) from None
            problems.append(message)
    if not rows:
        raise DataError(f"{path}: no usable rows ({len(problems)} bad; first: {problems[0]})")
    return LoadedRows(rows=rows, skipped=len(problems), problems=tuple(problems), where=tuple(kept))


def _check_unicode(row: PromptRow) -> PromptRow:
    """`row`, or a bad row when a text holds a lone surrogate (JSON's "\\ud800"), which no tokenizer can encode."""
    for field in ("prompt", "context", "answer"):
        text = getattr(row, field)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise _BadRow(f"{field} holds {text[e.start]!r} at character {e.start}, a lone surrogate that is not "
                          f"valid Unicode (fix the escape in the file)") from None
    return row


def rows_without_context(rows: list[PromptRow]) -> int:
    """How many rows give the teacher nothing beyond the student's prompt (no sentinel, or nothing after it)."""
    return sum(not row.context.strip() for row in rows)


def _check_suffix(path: Path) -> None:
    if path.suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type {path.suffix!r} (expected one of {', '.join(SUFFIXES)})")


def _read_records(path: Path) -> list[tuple[str, Any]]:
    """(where, record) pairs; a record that is not even valid JSON is a `_BadRow` instance to raise."""
    _check_suffix(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if path.suffix == ".parquet":
        try:
            records = [(f"row {i}", r) for i, r in enumerate(pl.read_parquet(path).iter_rows(named=True))]
        except (Exception, pl.exceptions.PanicException) as e:  # a Rust panic is a BaseException
            raise DataError(f"{path}: cannot read as parquet ({type(e).__name__}: {e})") from None
    else:
        records = _read_json_records(path)
    if not records:
        raise DataError(f"{path}: file has no rows")
    return records


def _read_json_records(path: Path) -> list[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # editors on Windows start files with a byte-order mark
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read as UTF-8 text ({e})") from None
    if text.lstrip().startswith("["):  # one JSON array of rows; a .jsonl file may also just start with a bad line
        try:
            array = json.loads(text)
        except json.JSONDecodeError as e:
            if path.suffix == ".json" or "\n" not in text.strip():
                raise DataError(f"{path}: not valid JSON ({e})") from None
            array = None
        except RecursionError:
            raise DataError(f"{path}: not usable JSON (nested too deeply)") from None
        if array is not None:
            return [(f"row {i}", r) for i, r in enumerate(array)]
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            record = _BadRow(f"not valid JSON ({e.msg} at column {e.colno})")
        except RecursionError:
            record = _BadRow("not usable JSON (nested too deeply)")
        records.append((f"row {len(records)} (line {line_no})", record))
    return records


def _row_from_verl(record: Any) -> PromptRow:
    record = _as_mapping(record)
    text = _prompt_text(record.get("prompt"))
    reward_model = record.get("reward_model")
    if reward_model is None and ("ground_truth" in record or "answer" in record):
        field = "ground_truth" if "ground_truth" in record else "answer"
        answer = _answer_text(record[field], field)
    elif reward_model is None:
        raise _BadRow("reward_model.ground_truth is missing")
    elif not isinstance(reward_model, dict):
        raise _BadRow(f"reward_model must be an object with a ground_truth, got {_describe(reward_model)}")
    else:
        answer = _answer_text(reward_model.get("ground_truth"), "reward_model.ground_truth")
    if text.count(TEACHER_CONTEXT_TOKEN) > 1:
        raise _BadRow(f"prompt holds {TEACHER_CONTEXT_TOKEN} {text.count(TEACHER_CONTEXT_TOKEN)} times; it may "
                      f"appear once, between the student text and the teacher context")
    row = PromptRow.from_text(text, answer=answer, data_source=_source(record))
    if not row.prompt.strip():
        raise _BadRow("prompt is empty (nothing before the teacher context)")
    return row


def _as_mapping(record: Any) -> dict:
    if isinstance(record, _BadRow):
        raise record
    if not isinstance(record, dict):
        raise _BadRow(f"row must be an object, got {_describe(record)}")
    return record


def _prompt_text(prompt: Any) -> str:
    """A plain-string prompt as is, or the last user message with any system message before it."""
    if prompt is None:
        raise _BadRow("prompt is missing")
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, list):
        raise _BadRow(f"prompt must be a string or a list of chat messages, got {_describe(prompt)}")
    for j, message in enumerate(prompt):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise _BadRow(f"prompt[{j}] must be a message with string `role` and `content`, got {message!r:.80}")
    users = [m["content"] for m in prompt if m["role"] == "user"]
    if not users:
        raise _BadRow("prompt has no user message")
    systems = [m["content"] for m in prompt if m["role"] == "system"]
    if systems and TEACHER_CONTEXT_TOKEN in systems[0]:
        # The system text goes before the question, so a context there would hide the question from the student.
        raise _BadRow(f"prompt's system message holds {TEACHER_CONTEXT_TOKEN}; put it in the last user message, "
                      f"after the question")
    return f"{systems[0]}\n\n{users[-1]}" if systems else users[-1]


def _answer_text(value: Any, field: str) -> str:
    if value is None:
        raise _BadRow(f"{field} is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _BadRow(f"{field} must be a string or a number, got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _BadRow(f"{field} is {value} (not a usable answer)")
    text = str(value)
    if not text.strip():
        raise _BadRow(f"{field} is empty")
    return text


def _source(record: dict) -> str:
    source = record.get("data_source")
    if source is None:
        return ""
    if not isinstance(source, str):
        raise _BadRow(f"data_source must be a string, got {_describe(source)}")
    return source


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r:.60}"
