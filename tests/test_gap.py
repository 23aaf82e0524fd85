"""The student–self-teacher gap on the tiny model: a context that adds nothing gives exactly zero, and a
context that changes the teacher's input moves the KL off zero."""
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpg.gap import context_gap
from sdpg.reward import MathVerifier
from sdpg.tasks.addition import make_rows


@pytest.fixture(scope="module")
def verifier():
    v = MathVerifier(timeout_s=10.0)
    yield v
    v.close()


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_teacher_reading_the_students_own_prompt_gives_zero_gap_and_zero_kl(tiny, verifier):
    model, tokenizer = tiny
    rows = make_rows(6, digits=(1, 1), seed=0, split="val")
    state = torch.random.get_rng_state()
    out = context_gap(model, tokenizer, rows, lambda row: "", k=3, verifier=verifier, max_new_tokens=10)
    assert out["gap/pass@1"] == 0.0 and out["gap/kl_mean"] == 0.0
    assert out["gap/student_pass@1"] == out["gap/teacher_pass@1"]
    assert out["gap/response_length"] > 0
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random stream is untouched


def test_a_real_context_changes_the_teacher_and_the_figures_are_consistent(tiny, verifier):
    model, tokenizer = tiny
    rows = make_rows(6, digits=(1, 1), seed=0, split="val")
    out = context_gap(model, tokenizer, rows, k=3, verifier=verifier, max_new_tokens=10)  # the rows' own hints
    assert out["gap/kl_mean"] > 0 and math.isfinite(out["gap/kl_mean"])
    assert out["gap/pass@1"] == pytest.approx(out["gap/teacher_pass@1"] - out["gap/student_pass@1"])
    again = context_gap(model, tokenizer, rows, k=3, verifier=verifier, max_new_tokens=10)
    assert again == out  # seeded: the same call measures the same figures


class StudentWrongTeacherRight:
    """Scores the first batch it sees (the student's samples) wrong and the second (the teacher's) right."""

    def __init__(self):
        self.batches = []

    def score(self, texts, answers):
        self.batches.append(len(texts))
        return [SimpleNamespace(correct=len(self.batches) == 2) for _ in texts]


def test_pass_rates_are_means_over_k_samples_per_problem(tiny):
    model, tokenizer = tiny
    rows = make_rows(2, digits=(1, 1), seed=0, split="val")
    scorer = StudentWrongTeacherRight()
    out = context_gap(model, tokenizer, rows, k=4, verifier=scorer, max_new_tokens=5)
    assert scorer.batches == [8, 8]
    assert out["gap/student_pass@1"] == 0.0 and out["gap/teacher_pass@1"] == 1.0 and out["gap/pass@1"] == 1.0


def test_bad_arguments_are_refused(tiny, verifier):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="at least one row"):
        context_gap(model, tokenizer, [], k=2, verifier=verifier, max_new_tokens=4)
    with pytest.raises(ValueError, match="k >= 1"):
        context_gap(model, tokenizer, make_rows(1, digits=(1, 1)), k=0, verifier=verifier, max_new_tokens=4)
