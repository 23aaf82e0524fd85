"""The embedded task registry: generators, splits, answers, context variants and response lengths."""
import re

import pytest

from sdpg.config import TrainConfig
from sdpg.embedded.tokenizer import CHARS, build_char_tokenizer
from sdpg.run import load_data
from sdpg.tasks.addition import make_rows
from sdpg.tasks import CONTEXTS, TASKS, get_task, tasks_with_difficulty
from sdpg.tasks.chain import STEPS

STEP = re.compile(r"(\d+)([+-])(\d+)=(\d+)")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_pure_and_their_splits_disjoint(name):
    task = TASKS[name]
    train, val = task.problems(3000, seed=1, split="train"), task.problems(400, seed=1, split="val")
    assert task.problems(3000, seed=1, split="train") == train
    assert task.problems(50, seed=2, split="train") != train[:50]
    assert not {p.question for p in train} & {p.question for p in task.problems(400, seed=5, split="val")}
    assert not {p.question for p in train} & {p.question for p in val}
    assert len({p.question for p in val}) == 400  # distinct problems
    assert all(set(p.question + p.response + CONTEXTS["full"](p)) <= set(CHARS) for p in train + val)


def test_the_add_task_is_exactly_the_embedded_addition_task():
    assert get_task("add").rows(200, seed=3, split="val") == make_rows(200, seed=3, split="val")
    assert get_task("add", (2, 1)).rows(50, seed=0) == make_rows(50, digits=(2, 1), seed=0)


@pytest.mark.parametrize("name", ["add", "sparse"])
def test_addition_answers_are_correct(name):
    for p in TASKS[name].problems(500, seed=0, split="val"):
        a, b = map(int, re.fullmatch(r"Q:(\d+)\+(\d+)\n", p.question).groups())
        assert p.answer == str(a + b) and p.response == "\\boxed{" + p.answer + "}"
    a, b = map(int, re.fullmatch(r"Q:(\d+)\+(\d+)\n", TASKS["sparse"].problems(1)[0].question).groups())
    assert (len(str(a)), len(str(b))) == (3, 3)


def test_reasoning_steps_chain_correctly_and_end_in_the_boxed_answer():
    for p in TASKS["reasoning"].problems(500, seed=0, split="train"):
        steps = STEP.findall(p.solution)
        assert len(steps) == STEPS and p.response == f"{p.solution} \\boxed{{{p.answer}}}"
        operands = [steps[0][0]] + [f"{op}{b}" for _, op, b, _ in steps]
        assert p.question == "Q:" + "".join(operands) + "\n"
        for i, (a, op, b, result) in enumerate(steps):
            assert int(result) == (int(a) + int(b) if op == "+" else int(a) - int(b)) and 0 <= int(result) <= 198
            if i:
                assert a == steps[i - 1][3]  # each step starts from the previous result
        assert p.answer == steps[-1][3] == str(eval(p.question[2:]))  # noqa: S307 (digits and +/- only)


def test_reasoning_responses_are_at_least_30_tokens_and_fit_the_task_budget():
    tokenizer = build_char_tokenizer()
    task = TASKS["reasoning"]
    lengths = [len(tokenizer(p.response, add_special_tokens=False)["input_ids"]) for p in task.problems(3000, seed=0)]
    assert min(lengths) >= 30
    assert max(lengths) <= task.response_tokens < task.max_new_tokens
    assert TrainConfig().rollout.max_new_tokens < task.response_tokens  # so its runs must raise it


def test_context_variants_show_what_their_names_say():
    p = TASKS["reasoning"].problems(1, seed=0, split="val")[0]
    assert CONTEXTS["full"](p) == f"Hint: {p.answer} ({p.solution})\n"
    assert CONTEXTS["answer"](p) == f"Hint: {p.answer}\n" and p.solution not in CONTEXTS["answer"](p)
    assert CONTEXTS["solution"](p) == f"Hint: ({p.solution})\n" and "Hint: " + p.answer not in CONTEXTS["solution"](p)
    assert CONTEXTS["none"](p) == ""
    rows = TASKS["reasoning"].rows(3, seed=0, split="val", context="solution")
    assert [r.context for r in rows] == [CONTEXTS["solution"](q) for q in TASKS["reasoning"].problems(3, split="val")]
    with pytest.raises(ValueError, match="unknown context variant 'hint'"):
        TASKS["add"].rows(1, context="hint")


def test_runs_load_the_configured_task_and_context():
    cfg = TrainConfig()
    cfg.data.task, cfg.data.context, cfg.data.n_train, cfg.data.n_val = "reasoning", "answer", 5, 3
    cfg.rollout.max_new_tokens = 48
    train, val = load_data(cfg.validate())
    assert train == TASKS["reasoning"].rows(5, seed=0, split="train", context="answer")
    assert val == TASKS["reasoning"].rows(3, seed=0, split="val", context="answer")


def test_bad_task_settings_are_refused_naming_the_field():
    cfg = TrainConfig()
    cfg.data.task = "reasoning"
    with pytest.raises(ValueError, match=r"rollout.max_new_tokens=24 is invalid: is too short for data.task='reasoning'"):
        cfg.validate()
    cfg.rollout.max_new_tokens, cfg.data.digits = 48, (4, 4)
    with pytest.raises(ValueError, match=r"data.digits=\(4, 4\) is invalid: applies to data.task='add' only"):
        cfg.validate()
    for field, value in (("task", "mult"), ("context", "hint")):
        bad = TrainConfig()
        setattr(bad.data, field, value)
        with pytest.raises(ValueError, match=f"data.{field}={value!r} is invalid"):
            bad.validate()
    with pytest.raises(ValueError, match="unknown task 'mult'"):
        get_task("mult")


def test_grpo_trains_the_same_whatever_the_teacher_reads(tiny_model_dir, tmp_path):
    # experiments.gain pairs every context of a task with one GRPO comparison: GRPO's teacher only serves the records
    import torch

    from conftest import tiny_config
    from sdpg.records import RecordStream
    from sdpg.run import build_trainer

    weights, rewards, kl = {}, {}, {}
    for context in ("full", "answer"):
        cfg = tiny_config(tiny_model_dir, tmp_path / context, loss__method="grpo", loss__alpha=0.0, data__context=context)
        trainer = build_trainer(cfg, RecordStream(cfg.run.run_dir), progress=False)
        metrics = [trainer.train_step() for _ in range(2)]
        trainer.verifier.close()
        weights[context] = [p.detach().clone() for p in trainer.model.parameters()]
        rewards[context] = [m["adv/values"] for m in metrics]
        kl[context] = metrics[-1]["kl/distill_mean"]
    assert rewards["full"] == rewards["answer"]
    assert all(torch.equal(a, b) for a, b in zip(weights["full"], weights["answer"], strict=True))
    assert kl["full"] != kl["answer"]  # the recorded teacher did read different contexts


def test_each_task_owns_its_difficulty_setting():
    assert tasks_with_difficulty() == ["add"]
    easy = get_task("add", (1, 1))
    assert easy.difficulty is not None and all(len(p.question) == len("Q:1+2\n") for p in easy.problems(5))
    assert get_task("add", (1, 1)).response_tokens < get_task("add").response_tokens
    for name in ("sparse", "reasoning"):  # a fixed difficulty: digits leave the task as it is
        assert TASKS[name].difficulty is None and get_task(name, (1, 1)) is TASKS[name]
