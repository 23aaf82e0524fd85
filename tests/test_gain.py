"""experiments.gain: gains over GRPO per (task, context), GRPO shared across a task's contexts, and correlations."""
import math

import pytest

from experiments.gain import _ranks, correlation, correlations, gain_points, main


def compare(task, context, finals: dict[str, list[float]]):
    variants = {v: {"settings": {"loss.method": v.split("-")[0]}} for v in finals}
    runs = [{"variant": v, "seed": s, "status": "finished", "summary": {"final_pass@1": x, "auc_pass@1": x / 2}}
            for v, xs in finals.items() for s, x in enumerate(xs)]
    return {"task": task, "context": context, "variants": variants, "runs": runs}


GAP = [{"task": "t", "context": c, "gap/pass@1": g, "gap/kl_mean": 1.0, "gap/student_pass@1": 0.1,
        "gap/teacher_pass@1": 0.1 + g} for c, g in (("full", 0.8), ("answer", -0.2), ("solution", 0.4))]


def test_gains_pair_seeds_with_the_task_grpo_and_follow_the_gap():
    comps = [compare("t", "full", {"grpo": [0.2, 0.3], "sdpg": [0.5, 0.5]}),
             compare("t", "answer", {"sdpg": [0.1, 0.2]}),  # no grpo here: the task's full-context one pairs
             compare("t", "solution", {"sdpg": [0.3, 0.4]}),
             compare("other", "full", {"sdpg": [0.9]})]  # not in the gap table: left out
    points = gain_points(GAP, comps)
    assert [(p["context"], p["variant"]) for p in points] == [("full", "sdpg"), ("answer", "sdpg"), ("solution", "sdpg")]
    full, answer, solution = points
    assert full["gain_final_pass@1"]["mean"] == pytest.approx(0.25)  # (0.3 + 0.2) / 2
    assert answer["gain_final_pass@1"]["mean"] == pytest.approx(-0.1)
    assert solution["gain_auc_pass@1"]["mean"] == pytest.approx(0.05 / 2 + 0.05 / 2)
    corr = correlations(points)["sdpg final_pass@1"]
    assert corr["pearson"]["n"] == 3 and corr["pearson"]["r"] > 0.9 and corr["spearman"]["r"] == pytest.approx(1.0)


def test_spearman_ranks_ties_and_degenerate_points():
    assert list(_ranks(__import__("numpy").array([3.0, 1.0, 3.0, 2.0]))) == [2.5, 0.0, 2.5, 1.0]
    assert correlation([1, 2, 3, 4], [4, 3, 2, 1], rank=True)["r"] == pytest.approx(-1.0)
    assert math.isnan(correlation([1, 1, 1], [1, 2, 3])["r"]) and math.isnan(correlation([1, 2], [1, 2])["r"])


def test_the_command_needs_something_to_pair(tmp_path, capsys):
    import json
    (tmp_path / "gap.json").write_text(json.dumps({"rows": GAP}))
    (tmp_path / "c.json").write_text(json.dumps(compare("t", "answer", {"sdpg": [0.1]})))
    assert main(["--gap", str(tmp_path / "gap.json"), "--compare", str(tmp_path / "c.json")]) == 1
    (tmp_path / "g.json").write_text(json.dumps(compare("t", "full", {"grpo": [0.2], "sdpg": [0.3]})))
    assert main(["--gap", str(tmp_path / "gap.json"), "--compare", str(tmp_path / "c.json"), str(tmp_path / "g.json"),
                 "--json", str(tmp_path / "out.json")]) == 0
    assert "| `t` | `answer` | `sdpg` | -0.200 |" in capsys.readouterr().out and (tmp_path / "out.json").exists()


def test_a_missing_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--gap", str(tmp_path / "gap.json"), "--compare", str(tmp_path / "c.json")])
    assert "no such file" in capsys.readouterr().err
