"""experiments.gain: gains over GRPO per (task, context), GRPO shared across a task's contexts, as a table (no
correlation coefficients over a handful of points)."""
import pytest

from experiments.gain import gain_points, main


def compare(task, context, finals: dict[str, list[float]]):
    variants = {v: {"settings": {"loss.method": v.split("-")[0]}} for v in finals}
    runs = [{"variant": v, "seed": s, "status": "finished", "summary": {"final_pass@1": x, "auc_pass@1": x / 2}}
            for v, xs in finals.items() for s, x in enumerate(xs)]
    return {"task": task, "context": context, "variants": variants, "runs": runs}


GAP = [{"task": "t", "context": c, "gap/pass@1": g, "gap/kl_mean": 1.0, "gap/student_pass@1": 0.1,
        "gap/teacher_pass@1": 0.1 + g} for c, g in (("full", 0.8), ("answer", -0.2), ("solution", 0.4))]


def test_gains_pair_seeds_with_the_task_grpo():
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


def test_the_command_needs_something_to_pair(tmp_path, capsys):
    import json
    (tmp_path / "gap.json").write_text(json.dumps({"rows": GAP}))
    (tmp_path / "c.json").write_text(json.dumps(compare("t", "answer", {"sdpg": [0.1]})))
    assert main(["--gap", str(tmp_path / "gap.json"), "--compare", str(tmp_path / "c.json")]) == 1
    (tmp_path / "g.json").write_text(json.dumps(compare("t", "full", {"grpo": [0.2], "sdpg": [0.3]})))
    assert main(["--gap", str(tmp_path / "gap.json"), "--compare", str(tmp_path / "c.json"), str(tmp_path / "g.json"),
                 "--json", str(tmp_path / "out.json")]) == 0
    out = capsys.readouterr().out
    assert "| `t` | `answer` | `sdpg` | -0.200 |" in out and "Pearson" not in out
    assert set(json.loads((tmp_path / "out.json").read_text())) == {"points"}


def test_a_missing_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--gap", str(tmp_path / "gap.json"), "--compare", str(tmp_path / "c.json")])
    assert "no such file" in capsys.readouterr().err
