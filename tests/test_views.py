"""Dashboard views on small record fixtures: the figure data must be exactly the records' numbers."""
import math

import pytest

from conftest import tiny_config
from fixtures.records import emit_step, fixture_config, make_group, make_metrics_row, write_run
from lab import (advantage_evolution, advantage_histogram, curves_figure, planned_beta, replay_status, rollout_html,
                 status_html, token_heatmap, topk_figure, whatif_figure)
from lab.curves import resolve_key, series
from lab.heatmap import show_token
from lab.style import COLORS
from lab.viewmodel import browsable_steps
from lab.widgets import LiveView
from sdpg.records import RecordStream
from sdpg.run import RunHandle


def trace(fig, name):
    matches = [t for t in fig.data if t.name == name]
    assert len(matches) == 1, f"expected one trace named {name!r}, got {[t.name for t in fig.data]}"
    return matches[0]


# ---------------- curves ----------------
def test_series_keeps_only_finite_numbers():
    rows = [{"step": 1, "x": 0.5}, {"step": 2}, {"step": 3, "x": None}, {"step": 4, "x": float("nan")},
            {"step": 5, "x": 2}, {"step": 6, "x": True}]
    assert series(rows, "x") == ([1, 5], [0.5, 2.0])


def test_pass_at_k_resolves_to_the_runs_own_k():
    rows = [{"step": 0, "eval/pass@1": 0.1, "eval/pass@8": 0.4}]
    assert resolve_key(rows, "eval/pass@k") == "eval/pass@8"
    assert resolve_key([{"step": 0}], "eval/pass@k") == "eval/pass@k"


def test_curves_draw_the_metric_values_and_sparse_eval_points():
    rows = [{"step": 1, "reward/mean": 0.25, "eval/pass@1": 0.1, "eval/pass@4": 0.3},
            {"step": 2, "reward/mean": 0.5}, {"step": 3, "reward/mean": 0.75, "eval/pass@1": 0.2, "eval/pass@4": 0.5}]
    fig = curves_figure(rows, fixture_config(steps=10).to_dict())
    reward = trace(fig, "reward")
    assert list(reward.x) == [1, 2, 3] and list(reward.y) == [0.25, 0.5, 0.75]
    assert list(trace(fig, "student pass@1").y) == [0.1, 0.2]
    assert list(trace(fig, "student pass@4").y) == [0.3, 0.5]
    assert "markers" in trace(fig, "student pass@1").mode
    assert list(fig.layout.xaxis.range) == [0, 10]


def test_planned_beta_follows_warmup_and_decay():
    cfg = fixture_config(steps=6).to_dict()  # beta 0.05, warmup 2, decay 2
    steps, values = planned_beta(cfg)
    assert steps == [1, 2, 3, 4, 5, 6]  # as recorded: step s trains with the schedule at s (from 1, as in verl)
    assert values == pytest.approx([0.025, 0.05, 0.05, 0.05, 0.025, 0.0])
    planned = trace(curves_figure([], cfg), "β planned")
    assert list(planned.y) == pytest.approx(values)


def test_no_planned_beta_for_a_method_without_distillation():
    cfg = fixture_config(steps=6).to_dict()
    cfg["loss"]["method"] = "grpo"
    assert planned_beta(cfg) == ([], [])
    assert planned_beta({}) == ([], [])


# ---------------- token heatmap ----------------
def ragged_group():
    group = make_group(step=3, group=1)
    group["responses"][1] = {**group["responses"][1], **{k: v[:5] for k, v in group["responses"][1].items()
                                                          if isinstance(v, list)}}
    return group


def test_heatmap_cells_are_the_fixture_kls_padded_with_none():
    group = ragged_group()
    heat = token_heatmap(group, "kl").data[0]
    width = max(len(r["tokens"]) for r in group["responses"])
    for row, r in zip(heat.z, group["responses"]):
        assert list(row) == r["kl"] + [None] * (width - len(r["kl"]))
    assert list(heat.text[1][:5]) == [show_token(t) for t in group["responses"][1]["tokens"]]
    assert list(heat.text[1][5:]) == [""] * (width - 5)
    assert heat.zmin == 0.0


def test_heatmap_hover_shows_token_p_q_log_ratio_advantage_and_gate():
    group = make_group(step=2, group=0)
    r = group["responses"][0]
    hover = token_heatmap(group).data[0].hovertext[0][3]
    p, q = math.exp(r["student_logp"][3]), math.exp(r["teacher_logp"][3])
    assert f"<b>{r['tokens'][3]}</b>" in hover
    assert f"student p = {p:.4f}" in hover and f"teacher q = {q:.4f}" in hover
    assert f"log(q/p) = {r['teacher_logp'][3] - r['student_logp'][3]:+.3f}" in hover
    assert f"advantage A = {r['advantage']:+.3f}" in hover
    assert ("gate ✓" in hover) == r["gate"]


def test_heatmap_colour_modes_log_ratio_and_prop31_advantage():
    group = make_group(step=2, group=0)
    r = group["responses"][2]
    log_ratio = token_heatmap(group, "log_ratio").data[0]
    a_dist = token_heatmap(group, "adv_dist").data[0]
    assert list(log_ratio.z[2]) == pytest.approx([q - p for p, q in zip(r["student_logp"], r["teacher_logp"])])
    assert list(a_dist.z[2]) == pytest.approx([k - (p - q) for k, p, q in zip(r["kl"], r["student_logp"], r["teacher_logp"])])
    assert log_ratio.zmid == 0.0 and log_ratio.zmin == -log_ratio.zmax


def test_heatmap_rejects_unknown_colour_mode_and_handles_missing_groups():
    with pytest.raises(ValueError, match="color_by='surprise'"):
        token_heatmap(make_group(1, 0), "surprise")
    empty = token_heatmap(None)
    assert not empty.data and "no rollout records" in empty.layout.annotations[0].text


def test_heatmap_cuts_long_responses_and_escapes_token_text():
    group = make_group(1, 0)
    r = group["responses"][0]
    r["tokens"] = ["<", " ", "\n"] + r["tokens"][3:]
    fig = token_heatmap(group, width=4)
    assert len(fig.data[0].z[0]) == 4
    assert list(fig.data[0].text[0][:3]) == ["&lt;", "␣", "⏎"]
    assert f"tokens 0–3 of {len(r['tokens'])}" in fig.layout.title.text
    assert "tokens" not in token_heatmap(group).layout.title.text.split("—")[1]  # a short group shows whole


# ---------------- advantages ----------------
def test_advantage_histogram_counts_and_title():
    row = {"step": 7, "adv/values": [-1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5, None],
           "adv/zero_var_groups": 0.25, "gate/fraction": 0.375}
    fig = advantage_histogram(row, bins=5)
    bar = fig.data[0]
    # bins of width 0.4 on [-1, 1]: [-1,-.6) [-.6,-.2) [-.2,.2) [.2,.6) [.6,1]
    assert list(bar.y) == [2, 0, 4, 1, 2]
    assert list(bar.x) == pytest.approx([-0.8, -0.4, 0.0, 0.4, 0.8])
    assert list(bar.marker.color) == [COLORS["negative"]] * 2 + [COLORS["zero"]] + [COLORS["positive"]] * 2
    assert "step 7" in fig.layout.title.text
    subtitle = fig.layout.title.subtitle.text
    assert "9 responses" in subtitle and "zero-variance groups 25%" in subtitle and "gate passes 38%" in subtitle


def test_advantage_evolution_shares_sum_to_one_per_step():
    rows = [{"step": 1, "adv/values": [-1.0, 1.0, 0.0, 0.0], "adv/zero_var_groups": 0.5},
            {"step": 2}, {"step": 3, "adv/values": [0.5, -0.5], "adv/zero_var_groups": 0.0}]
    fig = advantage_evolution(rows, bins=5)
    heat = fig.data[0]
    assert list(heat.x) == [1, 3]
    columns = list(zip(*heat.z))
    assert [sum(c) for c in columns] == pytest.approx([1.0, 1.0])
    assert columns[0][2] == pytest.approx(0.5)  # the two zeros of step 1 sit in the centre bin
    assert list(fig.data[1].y) == [0.5, 0.0]


def test_advantage_views_without_values_say_so():
    assert "no advantages" in advantage_histogram({"step": 1}).layout.annotations[0].text
    assert "no advantages" in advantage_evolution([]).layout.annotations[0].text


# ---------------- rollout inspector ----------------
def test_rollout_html_shows_prompt_context_and_every_response_escaped():
    group = make_group(4, 0)
    group["prompt"] = "1<2?"
    html = rollout_html(group)
    assert "1&lt;2?" in html and "1<2?" not in html
    assert group["context"] in html
    for r in group["responses"]:
        assert r["text"] in html
        assert f"{r['advantage']:+.3f}" in html
    assert html.count("correct</span>") == sum(r["correct"] for r in group["responses"])


def test_topk_figure_puts_student_and_teacher_side_by_side():
    group = make_group(4, 0)
    r = group["responses"][1]
    fig = topk_figure(group, 1, 2)
    student, teacher = fig.data
    assert list(student.x) == [p for _, p in r["student_topk"][2]]
    assert list(teacher.y) == [show_token(t) for t, _ in r["teacher_topk"][2]]
    assert student.marker.color[0] == COLORS["student"]  # the sampled token leads the fixture's top-k
    assert "no token at position 99" in topk_figure(group, 1, 99).layout.annotations[0].text
    assert "no response #9" in topk_figure(group, 9, 0).layout.annotations[0].text


# ---------------- what-if ----------------
def test_whatif_rows_are_the_methods_weights():
    weights = {"grpo": [1.0, 1.0, 1.0], "sdpg": [1.2, 0.9, -0.1], "opsd": [0.0, float("nan"), 0.3]}
    fig = whatif_figure(weights, ["a", "b", "c"])
    heat = fig.data[0]
    assert [list(row) for row in heat.z] == [[1.0, 1.0, 1.0], [1.2, 0.9, -0.1], [0.0, None, 0.3]]
    assert "GRPO" in heat.hovertext[0][0] and "+1.2000" in heat.hovertext[1][0]
    assert heat.zmid == 0.0
    with pytest.raises(ValueError, match="'sdpg' have 2 values for 3 tokens"):
        whatif_figure({"sdpg": [1.0, 2.0]}, ["a", "b", "c"])


# ---------------- status and replay ----------------
def test_replay_status_reads_the_last_lifecycle_event():
    assert replay_status([{"event": "start"}, {"event": "finished"}]) == ("finished", None)
    assert replay_status([{"event": "start"}, {"event": "checkpoint"}]) == ("incomplete", None)
    status, error = replay_status([{"event": "start"}, {"event": "error", "message": "boom", "traceback": "tb line"}])
    assert status == "crashed" and error.startswith("boom") and "tb line" in error
    card = status_html(status, step=3, total=6, error=error)
    assert "CRASHED" in card and "boom" in card and "tb line" in card


def test_replayed_run_feeds_every_view(tmp_path):
    run = write_run(tmp_path / "run", steps=4, crash_at=3)
    stream = RecordStream.open(run)
    metrics = stream.metrics()
    assert [r["step"] for r in metrics] == [1, 2]
    assert list(trace(curves_figure(metrics, stream.config()), "reward").y) == [r["reward/mean"] for r in metrics]
    group = stream.rollouts(2)[1]
    assert [list(row) for row in token_heatmap(group).data[0].z] == [r["kl"].tolist() for r in group["responses"]]
    assert replay_status(stream.events())[0] == "crashed"


# ---------------- notebook live view ----------------
def test_live_view_follows_new_records_and_redraws_only_on_change(tmp_path):
    stream = RecordStream(tmp_path / "live")
    stream.write_config(fixture_config(steps=5).to_dict())
    emit_step(stream, 1)
    view = LiveView(stream)
    assert view.update() is False  # nothing new since the constructor drew
    assert list(view.step.options) == [1] and view.step.value == 1
    emit_step(stream, 2)
    assert view.update() is True
    assert view.step.value == 2
    latest = stream.rollouts(2)[0]
    assert [list(row) for row in view.heatmap.data[0].z] == [r["kl"].tolist() for r in latest["responses"]]
    assert list(trace(view.curves, "reward").x) == [1, 2]


def test_live_view_browses_the_steps_the_page_browses(tmp_path):
    """A step with recorded advantages but no rollout records (groups not kept) is browsable in both faces."""
    stream = RecordStream(tmp_path / "live")
    stream.write_config(fixture_config(steps=5).to_dict())
    emit_step(stream, 1)
    row = make_metrics_row(2, [make_group(2, 0), make_group(2, 1)])
    stream.emit_metrics(2, row)
    view = LiveView(stream)
    assert list(view.step.options) == browsable_steps(stream) == [1, 2] and view.step.value == 2
    assert sum(view.histogram.data[0].y) == len(row["adv/values"])
    assert list(view.group.options) == [] and not view.heatmap.data


def test_live_view_selection_redraws_and_stops_following(tmp_path):
    stream = RecordStream(tmp_path / "live")
    for step in (1, 2, 3):
        emit_step(stream, step)
    view = LiveView(stream)
    view.step.value = 1
    assert view.follow.value is False
    view.group.value = 1
    first = stream.rollouts(1)[1]
    assert [list(row) for row in view.heatmap.data[0].z] == [r["kl"].tolist() for r in first["responses"]]
    emit_step(stream, 4)
    view.update()
    assert view.step.value == 1  # not following: the chosen step stays
    view.color.value = "log_ratio"
    assert view.heatmap.data[0].zmid == 0.0
    with pytest.raises(TypeError, match="run handle or a RecordStream"):
        LiveView(object())


def test_every_curve_has_its_own_legend_label():
    names = [t.name for t in curves_figure([], fixture_config().to_dict()).data]
    assert len(names) == len(set(names))


def test_status_card_shortens_event_paths():
    events = [{"event": "checkpoint", "step": 50, "path": "/runs/a/checkpoints/step_000050", "wall": 0.0}]
    card = status_html("running", step=50, total=200, events=events)
    assert "checkpoint · step 50 → step_000050" in card and "/runs/a" not in card
    assert "width:25.0%" in card


def test_live_view_refreshes_in_the_background_until_a_real_run_ends(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run")
    cfg.run.steps = 2
    run = RunHandle(cfg)
    view = LiveView(run).start(interval=0.1)
    run.start()
    run.join(timeout=120)
    view.join(timeout=10)
    assert run.status == "finished" and not view.refreshing
    assert "FINISHED" in view.status.value
    group = run.records.rollouts(2)[0]
    assert [list(row) for row in view.heatmap.data[0].z] == [r["kl"].tolist() for r in group["responses"]]


def test_panel_titles_show_latest_values_and_flat_series_keep_their_scale():
    rows = [{"step": 1, "reward/mean": 0.25, "optim/lr": 1e-4}, {"step": 2, "reward/mean": 0.5, "optim/lr": 1e-4}]
    fig = curves_figure(rows)
    titles = [a.text for a in fig.layout.annotations]
    assert "Reward (mean) · <b>0.5</b>" in titles and "Learning rate · <b>0.0001</b>" in titles
    lr_axis = trace(fig, "lr").yaxis.replace("y", "yaxis")
    assert list(fig.layout[lr_axis].range) == pytest.approx([5e-5, 1.5e-4])


def test_heatmap_drops_cell_text_when_columns_get_too_narrow():
    group = make_group(1, 0)
    r = group["responses"][0]
    for key, value in list(r.items()):
        if isinstance(value, list):
            r[key] = value * 10  # ~110 tokens
    wide = token_heatmap(group, width=110).data[0]
    assert wide.texttemplate == "" and "<b>" in wide.hovertext[0][100]
    assert token_heatmap(group).data[0].texttemplate == "%{text}"  # the default window keeps its text
    assert token_heatmap(make_group(1, 0)).data[0].texttemplate == "%{text}"


# ---------------- method comparison ----------------
def test_comparison_styles_keep_method_colours_and_tell_ablations_apart():
    from lab.compare import variant_styles

    styles = variant_styles(["sdpg", "grpo", "sdpg-alpha0", "sdpg-beta0", "sdpg-nogate", "mystery"])
    assert styles["sdpg"][1] == "solid" and styles["grpo"][0] != styles["sdpg"][0]
    ablations = [styles[n] for n in ("sdpg-alpha0", "sdpg-beta0", "sdpg-nogate")]
    assert {color for color, _ in ablations} == {styles["sdpg"][0]}
    assert len({dash for _, dash in ablations}) == 3 and "solid" not in {dash for _, dash in ablations}
    assert styles["mystery"][1] == "dot"
