"""Tests for the verifier reward: boxed extraction, math-verify in workers, time limits, penalties."""
import os
import signal
import threading
import time

import pytest

from sdpg.reward import (MathVerifier, Verdict, _math_verify_check, _Outcome, extract_boxed, fast_outcome,
                         overlong_penalty, reward_metrics)


# ---- per-item checks run inside the workers by the test verifiers (module level: they pickle) ----

def _check_or_hang(answer: str, extracted: str) -> _Outcome:
    """Like the real check, but "hang" blocks the worker's timer signal and sleeps, as C code would."""
    if extracted == "hang":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(120)
    return _math_verify_check(answer, extracted)


def _check_or_die(answer: str, extracted: str) -> _Outcome:
    """Like the real check, but "die" kills the worker process outright."""
    if extracted == "die":
        os._exit(3)
    return _math_verify_check(answer, extracted)


def _check_stamped(answer: str, extracted: str) -> _Outcome:
    """Always correct, stamped with a clock reading so a memoised result can be told from a fresh one."""
    return _Outcome("ok", True, str(time.monotonic_ns()))


class _HangingVerifier(MathVerifier):
    _check = staticmethod(_check_or_hang)


class _DyingVerifier(MathVerifier):
    _check = staticmethod(_check_or_die)


class _StampedVerifier(MathVerifier):
    _check = staticmethod(_check_stamped)


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(timeout_s=1.0) as v:
        yield v


# ---- extract_boxed -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("so the answer is \\boxed{579}.", "579"),
    ("\\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed {7}", "7"),
    ("\\boxed{}", ""),
    ("no box here: 579", None),
    ("\\boxed{1} and finally \\boxed{2", None),
    ("\\boxed 5", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


# ---- overlong penalty and metrics --------------------------------------------------------------

def test_overlong_penalty_ramps_linearly_in_the_buffer():
    # max 10, buffer 4: free up to 6, then -1/4 per token, -1 from 10 on (times penalty 0.5)
    got = overlong_penalty([0, 6, 7, 8, 10, 12], max_new_tokens=10, buffer=4, penalty=0.5)
    assert got == pytest.approx([0.0, 0.0, -0.125, -0.25, -0.5, -0.5])


def test_overlong_penalty_off_with_zero_buffer():
    assert overlong_penalty([3, 10, 50], max_new_tokens=10, buffer=0, penalty=1.0) == [0.0, 0.0, 0.0]


def test_overlong_penalty_rejects_bad_buffer():
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty([1], max_new_tokens=10, buffer=11, penalty=1.0)


def test_reward_metrics_counts_statuses():
    verdicts = [
        Verdict(True, 1.0, "ok", "5"),
        Verdict(False, 0.0, "ok", "4"),
        Verdict(False, 0.0, "no_answer", None),
        Verdict(False, 0.0, "timeout", "9^9", "slow"),
        Verdict(True, 1.0, "ok", "5"),
        Verdict(False, 0.0, "error", "x", "boom"),
    ]
    assert reward_metrics(verdicts) == {
        "reward/mean": pytest.approx(2 / 6), "reward/accuracy": pytest.approx(2 / 6),
        "reward/no_answer": 1.0, "reward/timeouts": 1.0, "reward/errors": 1.0,
    }


def test_reward_metrics_rejects_empty():
    with pytest.raises(ValueError):
        reward_metrics([])


# ---- MathVerifier ------------------------------------------------------------------------------

@pytest.mark.parametrize("response, answer, correct", [
    ("\\boxed{579}", "579", True),
    ("\\boxed{578}", "579", False),
    ("\\boxed{579.}", "579", True),
    ("\\boxed{\\dfrac12}", "\\frac{1}{2}", True),
    ("\\boxed{0.5}", "1/2", True),
    ("\\boxed{x = 5}", "5", True),
    ("\\boxed{5,000}", "5000", True),
    ("\\boxed{\\sqrt2}", "\\sqrt{2}", True),
    ("\\boxed{(1, 2)}", "(1,2)", True),
    ("\\boxed{(2, 1)}", "(1,2)", False),
    ("\\boxed{\\text{B}}", "B", True),
])
def test_score_judges_equivalent_forms(verifier, response, answer, correct):
    [v] = verifier.score([response], [answer])
    assert (v.status, v.correct, v.reward) == ("ok", correct, float(correct))


def test_score_keeps_order_and_reports_no_answer(verifier):
    out = verifier.score(["I think 3", "\\boxed{3}", "\\boxed{ }", "\\boxed{4}"], ["3", "3", "3", "3"])
    assert [v.status for v in out] == ["no_answer", "ok", "no_answer", "ok"]
    assert [v.reward for v in out] == [0.0, 1.0, 0.0, 0.0]
    assert [v.extracted for v in out] == [None, "3", " ", "4"]


def test_score_reports_math_verify_errors(verifier):
    # A gold of 1/0 makes math-verify's numeric comparison raise; it must surface, not read as "wrong".
    [v] = verifier.score(["\\boxed{5}"], ["\\frac{1}{0}"])
    assert (v.status, v.reward) == ("error", 0.0)
    assert "nan or zoo" in v.detail


def test_score_rejects_length_mismatch(verifier):
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        verifier.score(["\\boxed{1}", "\\boxed{2}"], ["1"])


def test_score_works_from_a_background_thread(verifier):
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=verifier.score(["\\boxed{1/2}"], ["0.5"])))
    thread.start()
    thread.join()
    assert [v.status for v in result["out"]] == ["ok"]
    assert result["out"][0].correct


def test_pathological_answer_times_out_and_others_still_score(verifier):
    # 9^(9^9) has ~370 million digits: math-verify evaluates it and, without a limit, does not return.
    out = verifier.score(["\\boxed{9^{9^{9}}}", "\\boxed{12}"], ["579", "12"])
    assert [v.status for v in out] == ["timeout", "ok"]
    assert [v.reward for v in out] == [0.0, 1.0]
    assert "longer than 1 s" in out[0].detail


def test_worker_stuck_beyond_its_timer_is_killed_and_pool_rebuilt():
    with _HangingVerifier(timeout_s=0.5) as v:
        out = v.score(["\\boxed{1}", "\\boxed{hang}", "\\boxed{3}"], ["1", "2", "4"])
        assert [x.status for x in out] == ["ok", "timeout", "ok"]
        assert [x.correct for x in out] == [True, False, False]
        assert "restarted" in out[1].detail
        assert [x.status for x in v.score(["\\boxed{7}"], ["7"])] == ["ok"]


def test_dead_worker_makes_its_item_an_error():
    with _DyingVerifier(timeout_s=1.0) as v:
        out = v.score(["\\boxed{1}", "\\boxed{die}", "\\boxed{3}"], ["1", "2", "3"])
        assert [x.status for x in out] == ["ok", "error", "ok"]
        assert "died" in out[1].detail


def test_repeats_are_checked_once_and_memoised():
    with _StampedVerifier(timeout_s=1.0) as v:
        first = v.score(["\\boxed{1}", "\\boxed{1}", "\\boxed{2}"], ["1", "1", "1"])
        second = v.score(["\\boxed{1}"], ["1"])
        other_gold = v.score(["\\boxed{1}"], ["2"])
    assert first[0].detail == first[1].detail == second[0].detail
    assert first[2].detail != first[0].detail
    assert other_gold[0].detail != first[0].detail


def test_two_workers_score_a_batch():
    responses = [f"\\boxed{{{n + (n % 3 == 0)}}}" for n in range(20)]
    with MathVerifier(timeout_s=1.0, workers=2) as v:
        out = v.score(responses, [str(n) for n in range(20)])
    assert [x.correct for x in out] == [n % 3 != 0 for n in range(20)]


def test_pm1_scale_gives_the_forks_plus_minus_one_rewards():
    with MathVerifier(timeout_s=5.0, scale="pm1") as v:
        out = v.score(["\\boxed{3}", "\\boxed{4}", "no box"], ["3", "3", "3"])
    assert [x.reward for x in out] == [1.0, -1.0, -1.0]
    assert [x.correct for x in out] == [True, False, False]


@pytest.mark.parametrize("kwargs", [{"timeout_s": 0}, {"workers": 0}, {"scale": "0-1"}])
def test_constructor_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        MathVerifier(**kwargs)


def test_memo_evicts_least_recently_used(monkeypatch):
    monkeypatch.setattr("sdpg.reward._MEMO_SIZE", 1)
    with _StampedVerifier(timeout_s=1.0) as v:
        [a1] = v.score(["\\boxed{1}"], ["1"])
        a2, b1 = v.score(["\\boxed{1}", "\\boxed{2}"], ["1", "1"])  # checking 2 evicts 1
        b2, a3 = v.score(["\\boxed{2}", "\\boxed{1}"], ["1", "1"])
    assert a2.detail == a1.detail
    assert b2.detail == b1.detail
    assert a3.detail != a1.detail


# ---- the in-process fast path ------------------------------------------------------------------

def _fast_path_cases() -> list[tuple[str, str]]:
    """(gold, extracted) pairs from the task's answers and this file's, with integer near misses and variants."""
    from sdpg.tasks.addition import make_rows

    golds = sorted({r.answer for d in ((1, 1), (3, 2), (3, 3)) for r in make_rows(40, digits=d, seed=1, split="train")})
    golds += ["579", "5", "5000", "1/2", "\\frac{1}{2}", "(1,2)", "B", "0", "-12", "123456789012345"]
    cases = []
    for gold in golds:
        preds = {gold, f" {gold} ", "0" + gold, f"{gold}.", "-" + gold, "+" + gold, "x = " + gold, "1/2"}
        if gold.lstrip("-").isdigit():
            n = int(gold)
            preds |= {str(n + 1), str(n - 1), str(-n), f"{n:,}", str(n * 10), f"{n}.0", "٤٢"}
        cases += [(gold, p) for p in sorted(preds)]
    return cases


def test_fast_path_gives_the_same_rewards_as_math_verify():
    decided = 0
    for gold, pred in _fast_path_cases():
        fast = fast_outcome(gold, pred)
        if fast is not None:
            decided += 1
            assert fast == _math_verify_check(gold, pred).correct, (gold, pred)
    assert decided > 300  # the clear cases are the common ones, and they are decided


def test_fast_path_leaves_everything_but_plain_integers_to_math_verify():
    for gold, pred in [("579", "579."), ("1/2", "0.5"), ("5000", "5,000"), ("5", "x = 5"), ("42", "٤٢"),
                       ("1", "1234567890123456"), ("B", "B")]:
        assert fast_outcome(gold, pred) is None, (gold, pred)


def test_fast_path_scores_without_a_worker(monkeypatch):
    with MathVerifier(timeout_s=1.0) as v:
        monkeypatch.setattr(v, "_check_all", lambda keys: keys and pytest.fail(f"sent {keys} to a worker") or {})
        out = v.score(["\\boxed{579}", "\\boxed{ 578 }", "no box"], ["579", "579", "579"])
    assert [(x.status, x.correct) for x in out] == [("ok", True), ("ok", False), ("no_answer", False)]
