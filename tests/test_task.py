import re

import pytest

from sdpg.tasks.addition import DATA_SOURCE, make_row, make_rows, split_of, target_text, worked_solution

QUESTION = re.compile(r"Q:(\d+)\+(\d+)\n")
HINT = re.compile(r"Hint: (\d+) \(([0-9+= ]+)\)\n")


def pairs(rows):
    return [tuple(int(x) for x in QUESTION.fullmatch(row.prompt).groups()) for row in rows]


def test_rows_are_deterministic_by_seed():
    assert make_rows(50, seed=3) == make_rows(50, seed=3)
    assert make_rows(50, seed=3) != make_rows(50, seed=4)


@pytest.mark.parametrize("digits,n_train", [((2, 2), 3000), ((3, 3), 4000)])
def test_train_and_val_are_disjoint_even_when_commuted(digits, n_train):
    train = {frozenset(p) for p in pairs(make_rows(n_train, digits=digits, seed=0, split="train"))}
    val = {frozenset(p) for p in pairs(make_rows(300, digits=digits, seed=1, split="val"))}
    assert train and val and not train & val


def test_split_ignores_order_of_addends():
    assert all(split_of(a, b) == split_of(b, a) for a in range(10, 60) for b in range(10, 60))


def test_row_format_and_context_holds_the_answer():
    for row, (a, b) in zip(rows := make_rows(100, digits=(3, 2), seed=0), pairs(rows)):
        assert 100 <= a <= 999 and 10 <= b <= 99
        assert row.answer == str(a + b)
        hint_answer, solution = HINT.fullmatch(row.context).groups()
        assert hint_answer == row.answer and solution == worked_solution(a, b)
        assert row.teacher_prompt == row.prompt + row.context
        assert row.data_source == DATA_SOURCE


def test_worked_solution_shows_carries_from_the_units_up():
    assert worked_solution(758, 467) == "8+7=15 5+6+1=12 7+4+1=12"
    assert worked_solution(123, 45) == "3+5=8 2+4=6 1+0=1"
    assert make_row(123, 456).context == "Hint: 579 (3+6=9 2+5=7 1+4=5)\n"


def test_target_is_boxed_answer():
    assert target_text("579") == "\\boxed{579}"


def test_rows_are_distinct_while_the_split_is_large_enough():
    assert len(set(pairs(make_rows(2000, digits=(2, 2))))) == 2000


def test_small_split_is_cycled_not_refused():
    val_pool = {(a, b) for a in range(10) for b in range(10) if split_of(a, b) == "val"}
    rows = pairs(make_rows(3 * len(val_pool), digits=(1, 1), split="val"))
    assert set(rows) == val_pool
    assert len(set(rows[:len(val_pool)])) == len(val_pool)


@pytest.mark.parametrize("kwargs,match", [
    ({"split": "test"}, "split"),
    ({"digits": (0, 3)}, "digits"),
    ({"digits": (3,)}, "digits"),
    ({"n": -1}, "n must"),
    ({"n": 100_000, "digits": (5, 1), "split": "val"}, "too many"),
])
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_rows(**{"n": 10, **kwargs})
