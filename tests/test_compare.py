"""The method-comparison experiment: its pure parts on hand-made records, then a real 2 x 1 x 2 run on the
tiny model, two processes at a time, that writes the table, the curves file and the figures, skips finished
runs and resumes."""
import json
import math
import re
import subprocess

import pytest

from conftest import tiny_config
import experiments.compare as compare
from experiments.compare import (ABLATIONS, SECONDS_PER_EVAL, SECONDS_PER_RUN, SECONDS_PER_STEP, SECTION,
                                 apply_settings, estimate_seconds, git_commit, main, replace_section, run_summary, seed_stats,
                                 section_title, variant_settings, variants, with_beta_sweep)
from sdpg.methods import METHODS
from sdpg.records import RecordStream
from sdpg.run import RunHandle


def test_variants_are_every_registered_method_plus_the_sdpg_ablations():
    table = variants()
    assert set(table) == set(METHODS) | set(ABLATIONS)
    assert table["grpo"] == {"loss.method": "grpo", "loss.alpha": 0.0}
    assert table["sdpg-nogate"] == {"loss.method": "sdpg", "loss.gate": False}
    assert all(v["loss.method"] in METHODS for v in table.values())


def test_beta_sweep_adds_a_variant_per_beta_after_each_distilling_one():
    names = with_beta_sweep(["grpo", "sdpg", "sdpg-nogate", "self_distill", "rlsd", "sdpg-beta0"], [0.02, 0.2])
    assert names == ["grpo", "sdpg", "sdpg-b0.02", "sdpg-b0.2", "sdpg-nogate", "sdpg-nogate-b0.02",
                     "sdpg-nogate-b0.2", "self_distill", "self_distill-b0.02", "self_distill-b0.2", "rlsd",
                     "sdpg-beta0"]  # grpo and rlsd do not distil; sdpg-beta0 fixes beta itself
    assert variant_settings("sdpg-nogate-b0.2") == {"loss.method": "sdpg", "loss.gate": False, "loss.beta": 0.2}
    for bad in ("grpo-b0.2", "sdpg-bx", "sdpg-b"):
        with pytest.raises(ValueError, match="unknown variant"):
            variant_settings(bad)


def test_estimate_counts_steps_evaluations_and_loading():
    per_run = estimate_seconds(1, 100, 25)
    assert per_run == pytest.approx(100 * SECONDS_PER_STEP + 5 * SECONDS_PER_EVAL + SECONDS_PER_RUN)  # 0, 25, ..., 100
    assert estimate_seconds(1, 100, 0) == pytest.approx(100 * SECONDS_PER_STEP + 2 * SECONDS_PER_EVAL + SECONDS_PER_RUN)
    assert estimate_seconds(1, 101, 25) == pytest.approx(101 * SECONDS_PER_STEP + 6 * SECONDS_PER_EVAL + SECONDS_PER_RUN)
    assert estimate_seconds(18, 100, 25) == pytest.approx(18 * per_run)


def test_run_summary_reads_final_best_and_late_training_means():
    metrics = [{"step": 0, "eval/pass@1": 0.9, "eval/teacher_pass@1": 0.5}]
    for k in range(1, 9):
        metrics.append({"step": k, "reward/mean": 0.1, "entropy/mean": float(k), "response/length_mean": 10.0 + k,
                        "kl/distill_mean": 0.01 * k})
    metrics += [{"step": 4, "eval/pass@1": 0.4, "eval/teacher_pass@1": 0.6},
                {"step": 8, "eval/pass@1": 0.3, "eval/teacher_pass@1": 0.7}]
    s = run_summary(metrics, steps=8)
    assert s["final_pass@1"] == 0.3 and s["teacher_pass@1"] == 0.7
    assert s["best_pass@1"] == 0.4  # step 0 does not count as a trained result
    assert s["auc_pass@1"] == pytest.approx((4 * (0.9 + 0.4) / 2 + 4 * (0.4 + 0.3) / 2) / 8)
    assert s["entropy"] == pytest.approx(7.5) and s["response_length"] == pytest.approx(17.5)  # steps 7 and 8
    assert s["distill_kl"] == pytest.approx(0.075)
    unfinished = run_summary(metrics[:5], steps=8)
    assert math.isnan(unfinished["final_pass@1"]) and math.isnan(unfinished["best_pass@1"])
    assert math.isnan(unfinished["auc_pass@1"])


def test_seed_stats_use_the_sample_std_and_skip_missing_values():
    s = seed_stats([0.2, 0.4, float("nan"), None])
    assert s["mean"] == pytest.approx(0.3) and s["std"] == pytest.approx(math.sqrt(0.02)) and s["n"] == 2
    one = seed_stats([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["std"])


def test_only_the_comparison_section_is_replaced():
    page = "# Results\n\nIntro.\n\n## Method comparison\n\nold table\n\n## Memory\n\nkept\n"
    new = replace_section(page, f"## {SECTION}\n\nnew table\n")
    assert new == "# Results\n\nIntro.\n\n## Method comparison\n\nnew table\n\n## Memory\n\nkept\n"
    assert replace_section("# Results\n\nIntro.\n", f"## {SECTION}\n\nx\n") == \
        "# Results\n\nIntro.\n\n## Method comparison\n\nx\n"
    last = replace_section("# R\n\n## Method comparison\n\nold\n", f"## {SECTION}\n\nnew\n")
    assert last == "# R\n\n## Method comparison\n\nnew\n"
    # another task's comparison is a section of its own
    sparse = replace_section(new, f"## {section_title('sparse')}\n\nsparse table\n")
    assert sparse.startswith(new) and sparse.endswith("## Method comparison: sparse task\n\nsparse table\n")
    assert section_title("reasoning", "answer") == "Method comparison: reasoning task, answer context"


def test_flags_the_experiment_sets_itself_are_refused(capsys):
    for flag in (["--seed", "3"], ["--method", "grpo"], ["--run.run_dir", "x"], ["--data.task", "sparse"]):
        with pytest.raises(SystemExit) as exc:
            main(["--steps", "1"] + flag)
        assert exc.value.code == 2
    assert "use --seeds" in capsys.readouterr().err
    assert main(["--methods", "ppo", "--steps", "1"]) == 2
    assert "unknown variants ['ppo']" in capsys.readouterr().err


def _events(run_dir):
    return [e["event"] for e in RecordStream.open(run_dir).events()]


def _start_walls(run_dir):
    return [e["wall"] for e in RecordStream.open(run_dir).events() if e["event"] == "start"]


def _finish_walls(run_dir):
    return [e["wall"] for e in RecordStream.open(run_dir).events() if e["event"] == "finished"]


def test_two_methods_one_seed_two_steps_in_two_processes_write_the_table_the_curves_and_the_figures(
        tiny_model_dir, tmp_path, capsys, monkeypatch):
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(tiny_config(tiny_model_dir, tmp_path / "unused").to_dict()))
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    results.write_text("# Results\n\n## Method comparison\n\nstale\n\n## Other\n\nkeep me\n")
    out = tmp_path / "runs"
    argv = ["--methods", "grpo", "sdpg", "--seeds", "0", "--steps", "2", "--out", str(out), "--jobs", "2",
            "--results", str(results), "--model", str(tiny_model_dir), "--config", str(cfg_file), "--no-png"]
    timeline, launch, reap = [], compare._launch, compare._reap

    def launched(plan, state, threads):
        proc = launch(plan, state, threads)
        timeline.append(("launch", proc.pid))
        return proc

    def reaped(plan, proc):
        ended = reap(plan, proc)
        if ended:
            timeline.append(("end", proc.pid))
        return ended
    monkeypatch.setattr(compare, "_launch", launched)
    monkeypatch.setattr(compare, "_reap", reaped)
    assert main(argv) == 0
    # both ran at once, each in a process of its own: the second started before either ended
    assert [kind for kind, _ in timeline] == ["launch", "launch", "end", "end"]
    assert len({pid for _, pid in timeline}) == 2
    assert len(_start_walls(out / "grpo-s0")) == len(_finish_walls(out / "sdpg-s0")) == 1
    assert (out / "grpo-s0" / "train.log").exists()

    page = results.read_text()
    assert "stale" not in page and page.endswith("## Other\n\nkeep me\n")
    for name in ("grpo", "sdpg"):
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2] == "1/1"
        numbers = cells[3:6] + cells[8:]
        assert all(re.fullmatch(r"\d+\.\d+", c) for c in numbers), row  # real numbers, no "–"
        deltas = cells[6:8]
        assert deltas == ["–", "–"] if name == "grpo" else all(re.fullmatch(r"[+-]\d+\.\d+", c) for c in deltas), row
    assert "python -m experiments.compare --methods grpo sdpg" in page
    assert re.search(r"at commit `([0-9a-f]{40}|unknown)`", page)
    assert "[compare_curves](figures/compare_curves.html)" in page and "--no-png" in page
    cpu_min = float(re.search(r"CPU time of the runs \(all sittings of this command\): (\d+\.\d+) min", page).group(1))
    assert cpu_min > 0

    data = json.loads((tmp_path / "docs" / "compare.json").read_text())
    assert {(r["variant"], r["step"]) for r in data["curves"]} == {(v, s) for v in ("grpo", "sdpg") for s in (1, 2)}
    assert all(math.isfinite(r["kl/distill_mean"]) and r["kl/distill_mean"] > 0 for r in data["curves"])
    assert {(r["variant"], r["step"]) for r in data["evals"]} == {(v, s) for v in ("grpo", "sdpg") for s in (0, 2)}
    assert data["summary"]["sdpg"]["final_pass@1"]["n"] == 1
    assert 0.0 <= data["summary"]["sdpg"]["final_pass@1"]["mean"] <= 1.0
    runs = {r["variant"]: r for r in data["runs"]}
    diff = data["summary"]["sdpg"]["vs_grpo"]["final_pass@1"]
    assert diff["mean"] == pytest.approx(runs["sdpg"]["summary"]["final_pass@1"] - runs["grpo"]["summary"]["final_pass@1"])
    assert data["summary"]["grpo"]["vs_grpo"]["final_pass@1"] == {"mean": 0.0, "lo": 0.0, "hi": 0.0, "n": 1}
    assert all(r["cpu_s"] > 0 for r in data["runs"])
    for fig in ("compare_curves.html", "compare_final.html", "plotly.min.js"):
        assert (tmp_path / "docs" / "figures" / fig).stat().st_size > 0
    assert _events(out / "grpo-s0").count("start") == 1

    # the same command again: both runs are finished, nothing starts
    assert main(argv) == 0
    assert _events(out / "grpo-s0").count("start") == _events(out / "sdpg-s0").count("start") == 1
    # other settings in the same directory are refused before anything runs
    assert main(argv + ["--loss.beta", "0.3"]) == 2
    assert "different settings (loss.beta)" in capsys.readouterr().err
    # a longer budget resumes from the checkpoint instead of starting over
    cpu_before = json.loads((out / "grpo-s0" / "cpu.json").read_text())["cpu_s"]
    assert main(["--methods", "grpo", "--seeds", "0", "--steps", "3"] + argv[7:]) == 0
    assert _events(out / "grpo-s0").count("resume_from") == 1
    assert [m["step"] for m in RecordStream.open(out / "grpo-s0").metrics()] == [0, 1, 2, 3]
    assert json.loads((out / "grpo-s0" / "cpu.json").read_text())["cpu_s"] > cpu_before  # both sittings count
    assert "| `sdpg` |" not in results.read_text()  # the section shows the latest command's variants


def test_an_interrupted_run_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    """A run stopped mid-way (as Ctrl-C stops it: checkpoint saved) is resumed, not restarted, by the next call."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "runs" / "grpo-s0", run__steps=6, run__save_every=2)
    cfg_file = tmp_path / "tiny.json"
    cfg_file.write_text(json.dumps(tiny_config(tiny_model_dir, tmp_path / "unused", run__save_every=2).to_dict()))
    argv = ["--methods", "grpo", "--seeds", "0", "--steps", "6", "--out", str(tmp_path / "runs"), "--jobs", "2",
            "--results", str(tmp_path / "results.md"), "--model", str(tiny_model_dir), "--config", str(cfg_file),
            "--no-png"]
    apply_settings(cfg, variant_settings("grpo"))
    handle = RunHandle(cfg.validate()).start()
    while handle.step < 2:
        handle.join(0.2)
    handle.stop()
    assert handle.status == "stopped" and handle.step < 6
    assert main(argv) == 0
    events = _events(tmp_path / "runs" / "grpo-s0")
    assert events.count("resume_from") == 1 and events[-1] == "finished"
    assert [m["step"] for m in RecordStream.open(tmp_path / "runs" / "grpo-s0").metrics() if "reward/mean" in m] == \
        [1, 2, 3, 4, 5, 6]


def test_rewriting_the_results_page_does_not_mark_the_code_modified(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "docs").mkdir()
    for name in ("code.py", "docs/results.md", "docs/compare.json"):
        (tmp_path / name).write_text("v1\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    outputs = (tmp_path / "docs" / "results.md", tmp_path / "docs" / "compare.json", tmp_path / "docs" / "figures")
    (tmp_path / "docs" / "results.md").write_text("v2\n")
    (tmp_path / "docs" / "compare.json").write_text("v2\n")
    head, dirty = git_commit(outputs)
    assert len(head) == 40 and not dirty
    (tmp_path / "code.py").write_text("v2\n")
    assert git_commit(outputs)[1] and git_commit()[1]
    # outputs written outside the checkout (e.g. a pilot under /tmp) still leave the commit known
    elsewhere = (tmp_path.parent / f"{tmp_path.name}-out" / "results.md",)
    assert git_commit(elsewhere)[0] == head


def test_a_learning_rate_suffix_sets_the_rate_of_any_variant():
    from experiments.compare import lr_variant, variant_settings
    assert lr_variant("sdpg-nogate", 3e-5) == "sdpg-nogate-lr3e-05"
    assert variant_settings("sdpg-nogate-lr3e-05") == {"loss.method": "sdpg", "loss.gate": False, "optim.lr": 3e-5}
    assert variant_settings("sdpg-b0.2-lr1e-05") == {"loss.method": "sdpg", "loss.beta": 0.2, "optim.lr": 1e-5}
    # GRPO with the shared anchor keeps the base config's alpha; plain grpo drops it
    assert variant_settings("grpo-anchor-lr0.0001") == {"loss.method": "grpo", "optim.lr": 1e-4}
    assert variant_settings("grpo")["loss.alpha"] == 0.0
    with pytest.raises(ValueError, match="unknown variant"):
        variant_settings("nosuch-lr1e-05")
    with pytest.raises(ValueError, match="unknown variant"):
        variant_settings("sdpg-lrabc")
