"""The dashboard served in-process and driven through `gradio_client`, with real short training runs."""
import json
import math
import time
from pathlib import Path

import pytest
from gradio_client import Client

import app as dashboard
from conftest import tiny_config
from fixtures.records import write_run
from fixtures.page import CONTROLS, page_controls as controls
from fixtures.waiting import free_port, wait_for
from sdpg.config import TrainConfig
from sdpg.data import PromptRow
from sdpg.playground import Subject, context_variants, probe_response, recorded_response_ids
from sdpg.records import RecordStream
from sdpg.run import RunHandle
from sdpg.trainer import Trainer


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """The app over a temporary runs root, its base config the tiny model; yields (ctl, client, url)."""
    runs_root = tmp_path_factory.mktemp("runs")
    base = tiny_config(tiny_model_dir, "")
    ctl = dashboard.Controller(runs_root, allowed_roots=[tmp_path_factory.getbasetemp()])
    demo = dashboard.build_app(ctl, base_config=base)
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    client = Client(url, verbose=False)
    yield ctl, client, url
    if ctl.handle is not None:
        ctl.handle.stop(wait=True, timeout=30)
    demo.close()


def wait_for_step(handle, step, timeout=90.0):
    """Wait until the run has finished `step` training steps; a crash fails at once with its error."""
    def reached():
        assert handle.status != "crashed", f"the run crashed: {handle.error}"
        return handle.step >= step
    wait_for(reached, timeout=timeout, what=f"training step {step}")


def finish(ctl):
    if ctl.handle is not None and ctl.handle.alive:
        ctl.handle.stop(wait=True, timeout=60)


def test_invalid_settings_show_a_message_and_start_nothing(served, tiny_model_dir, tmp_path):
    ctl, client, _ = served
    finish(ctl)
    before = ctl.handle
    base = tiny_config(tiny_model_dir, "")
    message = client.predict(*controls(base, beta=-1.0), api_name="/start")
    assert "Not started" in message and "loss.beta=-1.0" in message
    message = client.predict(*controls(base, data=str(tmp_path / "missing.jsonl")), api_name="/start")
    assert "data.train=" in message and "no such file" in message
    message = client.predict(*controls(base, model=str(tmp_path / "no/such/model")), api_name="/start")
    assert "model.name=" in message and "no such directory" in message
    assert ctl.handle is before


def test_start_pause_resume_stop_with_real_records(served, tiny_model_dir):
    ctl, client, _ = served
    finish(ctl)
    base = tiny_config(tiny_model_dir, "")
    message = client.predict(*controls(base, steps=40), api_name="/start")
    assert "Started SDPG for 40 steps" in message, message
    handle = ctl.handle
    assert str(handle.run_dir).startswith(str(ctl.runs_root))
    wait_for_step(handle, 1)
    assert client.predict(api_name="/status") == "running"
    assert "Cannot start now" in client.predict(*controls(base), api_name="/start")

    rows = [r for r in handle.records.metrics() if r["step"] >= 1]
    assert rows and all(math.isfinite(r["reward/mean"]) and 0 <= r["reward/mean"] <= 1 for r in rows)
    assert all(len(r["adv/values"]) == base.rollout.prompts_per_step * base.rollout.group_size for r in rows)

    assert "Pause requested" in client.predict(api_name="/pause")
    wait_for(lambda: client.predict(api_name="/status") == "paused", timeout=60, what="paused")
    paused_at = handle.step
    time.sleep(1.5)
    assert handle.step == paused_at
    assert "Resumed." in client.predict(api_name="/resume")
    wait_for_step(handle, paused_at + 1)
    assert client.predict(api_name="/status") == "running"

    assert "Checkpoint requested" in client.predict(api_name="/checkpoint")
    wait_for(lambda: any(e["event"] == "checkpoint" for e in handle.records.events()), timeout=60, what="checkpoint")
    assert "Stop requested" in client.predict(api_name="/stop")
    wait_for(lambda: client.predict(api_name="/status") == "stopped", timeout=60, what="stopped")
    assert handle.step < 40
    events = [e["event"] for e in handle.records.events()]
    assert events[0] == "start" and "pause" in events and "resume" in events and events[-1] == "stopped"


def test_refresh_endpoint_serves_the_same_run_to_every_tab(served, tiny_model_dir):
    ctl, client, url = served
    finish(ctl)
    client.predict(*controls(tiny_config(tiny_model_dir, ""), steps=2), api_name="/start")
    wait_for(lambda: ctl.live_status() == "finished", timeout=90, what="the run to finish")
    second_tab = Client(url, verbose=False)
    outputs = [c.predict(None, None, True, "kl", 0, 0, 0, api_name="/refresh") for c in (client, second_tab)]
    for out in outputs:
        status = out[0]
        assert "FINISHED" in status and str(ctl.handle.run_dir) in status
    heat = heatmap_trace(outputs[0])
    group = ctl.handle.records.rollouts(2)[0]
    assert len(heat["z"]) == len(group["responses"])
    for row, r in zip(heat["z"], group["responses"]):
        assert row[:len(r["kl"])] == pytest.approx(r["kl"])


def heatmap_trace(outputs) -> dict:
    """The KL heatmap trace among a refresh's outputs (a plot arrives as JSON inside a dict)."""
    for out in outputs:
        if isinstance(out, dict) and out.get("type") == "plotly":
            fig = json.loads(out["plot"])
            traces = [t for t in fig["data"] if t.get("type") == "heatmap" and t.get("hovertext")]
            if traces and "KL" in fig["layout"]["title"]["text"]:
                return traces[0]
    raise AssertionError("no KL heatmap among the refresh outputs")


def test_a_crash_shows_on_the_page_and_records_stay_browsable(served, tiny_model_dir, monkeypatch):
    ctl, client, _ = served
    finish(ctl)
    real_step = Trainer.train_step

    def crash_on_second_step(self):
        if self.step == 1:
            raise RuntimeError("injected failure in step 2")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_on_second_step)
    client.predict(*controls(tiny_config(tiny_model_dir, ""), steps=5), api_name="/start")
    wait_for(lambda: ctl.live_status() == "crashed", timeout=90, what="the crash")
    out = client.predict(None, None, True, "kl", 0, 0, 0, api_name="/refresh")
    assert "CRASHED" in out[0] and "injected failure in step 2" in out[0]
    assert heatmap_trace(out)["z"]  # step 1's rollouts are still drawn


def test_replay_opens_a_recorded_run(served, tmp_path):
    ctl, client, _ = served
    run = write_run(tmp_path / "recorded", steps=3, crash_at=3)
    assert "Opened" in client.predict(str(run), api_name="/open_replay")
    out = client.predict(None, None, True, "kl", 0, 0, 0, api_name="/refresh")
    assert "replay" in out[0] and "CRASHED" in out[0] and "fixture crash" in out[0]
    group = ctl.stream().rollouts(2)[0]
    assert [list(row) for row in heatmap_trace(out)["z"]] == [r["kl"].tolist() for r in group["responses"]]
    assert "does not exist" in client.predict(str(tmp_path / "nope"), api_name="/open_replay")
    assert "Showing the live run" in client.predict(api_name="/show_live")
    assert ctl.replay is None


def plot_of(out) -> dict:
    return json.loads(out["plot"])


def test_playground_probes_a_paused_live_run_then_its_checkpoint_in_replay(served, tiny_model_dir):
    ctl, client, _ = served
    finish(ctl)
    client.predict(*controls(tiny_config(tiny_model_dir, ""), steps=40), api_name="/start")
    handle = ctl.handle
    wait_for_step(handle, 1)
    client.predict(api_name="/pause")
    wait_for(lambda: handle.status == "paused", timeout=60, what="paused")
    step = handle.records.rollout_steps()[-1]
    args = ["recorded", step, 0, 1, "", "", "", "", 1.0, "Hint: think", "kl", 2]
    where, heat, summary, logq, topk = client.predict(*args, api_name="/probe")
    assert f"weights after step {handle.step}" in where
    response = handle.records.rollouts(step)[0]["responses"][1]
    trace = plot_of(heat)["data"][0]
    names = [label.split("  (")[0] for label in trace["y"]]
    assert names == ["real hint", "no hint", "answer only", "solution only", "wrong answer", "own prompt (sanity)", "free text"]
    assert all(len(row) == len(response["tokens"]) for row in trace["z"])
    assert trace["z"][names.index("own prompt (sanity)")] == [0.0] * len(response["tokens"])
    # the page shows what the engine computes on the same (paused) weights
    group = handle.records.rollouts(step)[0]
    row = PromptRow(group["prompt"], group["context"], group["answer"])
    direct = handle.call_between_steps(lambda t: probe_response(
        Subject.from_trainer(t), row.prompt, recorded_response_ids(t.tokenizer, response), context_variants(row)))
    assert trace["z"][0] == pytest.approx(direct["variants"][0]["kl"], abs=1e-6)
    assert "mean KL" in summary and "Top-5 at position 2" in topk
    assert len(plot_of(logq)["data"]) == 1 + len(names)

    gap = client.predict(3, 2, "", api_name="/context_gap")
    assert "own prompt (sanity)" in gap and "3 problems × 2 samples" in gap and "live run" in gap
    client.predict(api_name="/stop")
    wait_for(lambda: handle.status == "stopped", timeout=60, what="stopped")

    assert "Opened" in client.predict(str(handle.run_dir), api_name="/open_replay")
    typed = ["typed", None, None, 0, "Q:3+4\n", "Hint: 7 (3+4=7)\n", "7", "\\boxed{7}", 1.0, "", "kl", 0]
    where, heat, *_ = client.predict(*typed, api_name="/probe")
    assert "checkpoint" in where and str(handle.run_dir) in where
    assert len(plot_of(heat)["data"][0]["z"]) == 6
    client.predict(api_name="/show_live")


def test_compare_overlays_chosen_runs_with_summary_and_config_diff(served, tiny_model_dir, tmp_path):
    ctl, client, _ = served
    finish(ctl)
    dirs = []
    for method, seed in (("sdpg", 0), ("grpo", 1)):
        cfg = tiny_config(tiny_model_dir, tmp_path / "cmp" / f"{method}-s{seed}", loss__method=method, run__seed=seed,
                          run__steps=2)
        cfg.loss.alpha = 0.0 if method == "grpo" else cfg.loss.alpha
        handle = RunHandle(cfg).start()
        handle.join(timeout=90)
        assert handle.status == "finished", handle.error
        dirs.append(str(handle.run_dir))
    note, curves, summary, diff = client.predict(dirs + [str(tmp_path / "missing")], api_name="/compare")
    assert "Comparing 2 runs" in note and "does not exist" in note
    fig = plot_of(curves)
    names = {t["name"] for t in fig["data"]}
    assert names == {"sdpg-s0", "grpo-s1"}
    styles = {(t["name"], t["line"]["color"], t["line"]["dash"]) for t in fig["data"]}
    assert len(styles) == 2  # one colour and dash per run, the same in every panel
    pass_trace = next(t for t in fig["data"] if t["name"] == "sdpg-s0" and t["xaxis"] == "x")
    evals = [m for m in RecordStream.open(dirs[0]).metrics() if "eval/pass@1" in m]
    assert pass_trace["y"] == [m["eval/pass@1"] for m in evals]
    assert summary.count("finished") == 2 and "wall time" in summary
    assert "loss.method" in diff and "run.seed" in diff and "loss.alpha" in diff and "run.run_dir" not in diff


def test_the_demo_recipe_is_the_tuned_baseline_s_and_the_baseline_learns_there():
    """The page's task, learning rate and mini-batches follow docs/science/tuned-<demo task>.json: the rate the tuned
    baseline chose, run with the same updates per step, and on the fresh seeds that baseline's final - step-0 pass@1
    interval lies above 0 (the teacher's signal is shown where GRPO learns too)."""
    cfg = dashboard.demo_config()
    assert (cfg.optim.lr, cfg.optim.mini_batch_prompts) == (dashboard.DEMO_LR, dashboard.DEMO_MINI_BATCH)
    tuned = json.loads((Path(dashboard.__file__).parent / "docs" / "science" / f"tuned-{dashboard.DEMO_TASK}.json")
                       .read_text())
    assert f"mini-batches of {dashboard.DEMO_MINI_BATCH} prompts" in tuned["meta"]["base"]
    baseline = tuned["confirm"]["variants"][tuned["confirm"]["baseline"]]
    assert baseline["lr"] == dashboard.DEMO_LR and baseline["gain"]["lo"] > 0


def test_the_page_starts_from_the_demo_task_and_its_task_control_sets_the_run():
    assert dashboard.CONTROL_NAMES == tuple(CONTROLS)
    assert dashboard.demo_config().data.task == dashboard.DEMO_TASK
    demo = dashboard.build_app(dashboard.Controller("unused-runs-root"))
    [task] = [c for c in demo.config["components"] if c.get("props", {}).get("label") == "Embedded task"]
    assert task["props"]["value"] == dashboard.DEMO_TASK and dashboard.DEMO_WHY in task["props"]["info"]
    base = dashboard.demo_config()
    values = dict(zip(CONTROLS, controls(base)))
    assert dashboard.config_from_controls(base, **values).data.task == dashboard.DEMO_TASK
    assert dashboard.config_from_controls(base, **{**values, "task": "sparse"}).data.task == "sparse"
    add = TrainConfig()  # 24-token rollouts: too short for reasoning's answers
    reasoning = dashboard.config_from_controls(add, **{**dict(zip(CONTROLS, controls(add))), "task": "reasoning"})
    assert reasoning.data.task == "reasoning" and reasoning.rollout.max_new_tokens == 48  # grown to hold its answers
    with pytest.raises(ValueError, match="nope"):
        dashboard.config_from_controls(base, **{**values, "task": "nope"})
