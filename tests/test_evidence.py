"""experiments.evidence: gate share, zero-variance share, teacher agreement and KL per response class, pooled
exactly over runs, from records written by the engine's own record stream."""
import math

import pytest

from experiments.evidence import evidence, main, markdown
from sdpg.records import RecordStream


def response(tokens, teacher_top1, kl, *, correct, gate):
    return {"text": "".join(tokens), "reward": float(correct), "correct": correct, "status": "ok",
            "advantage": 0.5 if gate else -0.5, "gate": gate, "tokens": tokens, "kl": kl,
            "teacher_topk": [[[t, 0.9], ["x", 0.1]] for t in teacher_top1]}


def write_run(run_dir, groups, zero_var):
    stream = RecordStream(run_dir)
    for step, z in enumerate(zero_var, 1):
        stream.emit_metrics(step, {"adv/zero_var_groups": z})
    stream.emit_rollouts(1, groups)


@pytest.fixture()
def comparison(tmp_path):
    root = tmp_path / "compare-sparse"
    gated = response(["\\", "1", "2"], ["\\", "1", "3"], [0.0, 0.2, 0.4], correct=True, gate=True)
    wrong = response(["7", "}"], ["8", "}"], [2.0, 0.0], correct=False, gate=False)
    blocked = response(["5"], ["5"], [0.1], correct=True, gate=False)
    write_run(root / "sdpg-s0", [{"group": 0, "prompt": "Q", "context": "H", "answer": "12",
                                  "responses": [gated, wrong]}], zero_var=[0.5, 1.0])
    write_run(root / "sdpg-s1", [{"group": 0, "prompt": "Q", "context": "H", "answer": "5",
                                  "responses": [blocked, wrong]}], zero_var=[0.0])
    write_run(root / "grpo-s0", [{"group": 0, "prompt": "Q", "context": "H", "answer": "5",
                                  "responses": [wrong]}], zero_var=[1.0])
    return root


def test_figures_pool_counts_over_seeds(comparison):
    table = evidence([comparison])
    assert list(table) == ["compare-sparse/grpo", "compare-sparse/sdpg"]
    sdpg = table["compare-sparse/sdpg"]
    assert sdpg["runs"] == 2 and sdpg["responses"] == 4
    assert sdpg["zero_var_share"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # every step's value, both seeds
    assert sdpg["gate_share"] == pytest.approx(1 / 4)
    assert sdpg["gated"]["agreement"] == pytest.approx(2 / 3)  # "\\" and "1" agree, "2" vs "3" does not
    assert sdpg["gated"]["kl_per_token"] == pytest.approx(0.6 / 3)
    assert sdpg["gated"]["digit_agreement"] == pytest.approx(1 / 2) and sdpg["gated"]["kl_per_digit"] == pytest.approx(0.3)
    assert sdpg["wrong"]["share"] == pytest.approx(2 / 4)
    assert sdpg["wrong"]["agreement"] == pytest.approx(2 / 4)  # "}" twice agrees, "7" vs "8" twice not
    assert sdpg["wrong"]["kl_per_digit"] == pytest.approx(2.0)
    assert sdpg["blocked correct"]["agreement"] == 1.0
    grpo = table["compare-sparse/grpo"]
    assert grpo["gate_share"] == 0 and math.isnan(grpo["gated"]["agreement"])


def test_the_table_and_the_command(comparison, tmp_path, capsys):
    text = markdown(evidence([comparison]))
    assert "| `compare-sparse/sdpg` | 2 | 0.500 | 0.250 | 0.500 | 0.667 |" in text and "–" in text
    assert main([str(comparison), "--json", str(tmp_path / "e.json")]) == 0
    assert (tmp_path / "e.json").exists() and "compare-sparse/grpo" in capsys.readouterr().out
    assert main([str(tmp_path / "nothing")]) == 1
