"""Stops that always stop and resumes that always resume: SIGTERM and Stop inside long phases (warm start,
held-out evaluation, playground), bounded playground questions, and checkpoints that verify, order by number
and are never lost mid-swap. Each test reproduces a failure that was seen, with real runs, processes and files.

Child processes get a log file and their own session, and are killed as a group at the end (NOTES.md: a process
that started a multiprocessing pool leaves its workers holding any pipes it was given).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gradio_client import Client

import app as dashboard
from conftest import tiny_config
from fixtures.page import page_controls
from fixtures.waiting import free_port, wait_for
from sdpg.checkpoint import MANIFEST_FILE, STATE_FILE, latest_checkpoint, save_checkpoint
from sdpg.records import EVENTS_FILE, RecordStream
from sdpg.run import RunHandle, build_trainer

REPO = Path(__file__).resolve().parent.parent


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines() if line.strip()]


def kinds(run_dir: Path) -> list[str]:
    return [e["event"] for e in events(run_dir)]


# ---------------- item 7: SIGTERM and Stop inside long phases ----------------
def test_sigterm_during_a_held_out_evaluation_stops_within_seconds_with_a_checkpoint(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = tiny_config(tiny_model_dir, run_dir, data__n_val=400, data__digits=(3, 3), run__eval_samples=16,
                      rollout__max_new_tokens=160)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    log = tmp_path / "train.log"
    proc = subprocess.Popen([sys.executable, "-m", "sdpg.train", "--config", str(tmp_path / "cfg.json"), "--quiet"],
                            cwd=REPO, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: (run_dir / EVENTS_FILE).exists() and "start" in kinds(run_dir), timeout=120, what="start")
        time.sleep(4.0)  # loading is done in well under a second; the first evaluation (minutes) is under way
        assert not (run_dir / "metrics.jsonl").exists(), "the evaluation ended before the signal: make it longer"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - t0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert rc == 0, log.read_text()[-2000:]
    assert took < 15, f"SIGTERM took {took:.1f} s to stop the evaluation"
    last = events(run_dir)[-2:]
    assert [e["event"] for e in last] == ["checkpoint", "stopped"], last
    assert "generation" in last[1]["during"]
    assert latest_checkpoint(run_dir).name == "step_000000"


def test_stop_during_the_embedded_warm_start_ends_it_within_seconds_and_caches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SDPG_CACHE", str(tmp_path / "cache"))
    cfg = tiny_config("embedded", tmp_path / "run")
    handle = RunHandle(cfg).start()
    wait_for(lambda: "warmstart" in kinds(handle.run_dir), timeout=180, what="the warm start's first step")
    t0 = time.monotonic()
    handle.stop(wait=True, timeout=60)
    took = time.monotonic() - t0
    assert not handle.alive and took < 10, f"the warm start went on for {took:.1f} s after Stop"
    assert handle.status == "stopped"
    last = events(handle.run_dir)[-1]
    assert last["event"] == "stopped" and "warm start" in last["during"] and "no checkpoint" in last["note"]
    assert not list((tmp_path / "cache").glob("embedded-*/warmstart.json"))


def test_a_rollout_cut_short_is_discarded_and_the_checkpoint_is_the_last_completed_step(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", run__steps=50, rollout__prompts_per_step=32,
                      rollout__group_size=8, rollout__max_new_tokens=160, data__n_train=400, data__digits=(3, 3))
    handle = RunHandle(cfg).start()
    wait_for(lambda: handle.step >= 1 or handle.status == "crashed", timeout=300, what="the first step")
    engine = handle.trainer.engine
    generate = engine.generate

    def stop_then_generate(*args, **kwargs):  # Stop lands inside the next rollout, however fast the host samples
        handle.stop(wait=False)
        return generate(*args, **kwargs)

    engine.generate = stop_then_generate
    handle.join(timeout=60)
    assert handle.status == "stopped", handle.error
    stopped = events(handle.run_dir)[-1]
    assert stopped["event"] == "stopped" and stopped["during"] == "stop requested during generation"
    step = stopped["step"]
    state = torch.load(latest_checkpoint(handle.run_dir) / STATE_FILE, weights_only=True)
    assert state["step"] == step and state["sampler"]["pos"] == 32 * step  # the cut step's prompts are not used up
    assert [m["step"] for m in handle.records.metrics()] == list(range(step + 1))


# ---------------- items 2 and 6: playground questions are bounded and cancellable ----------------
@pytest.fixture(scope="module")
def live(tiny_model_dir, tmp_path_factory):
    """The page over a live, long tiny run with long responses; yields (ctl, client)."""
    runs_root = tmp_path_factory.mktemp("pg-runs")
    base = tiny_config(tiny_model_dir, "", run__steps=100000, data__n_val=20, rollout__max_new_tokens=160,
                       data__digits=(3, 3))
    ctl = dashboard.Controller(runs_root, allowed_roots=[tiny_model_dir])
    demo = dashboard.build_app(ctl, base_config=base)
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    client = Client(url, verbose=False)
    assert "Started" in client.predict(*page_controls(base), api_name="/start")
    wait_for(lambda: ctl.handle.step >= 1 or ctl.handle.status == "crashed", timeout=300, what="the first step")
    yield ctl, client
    ctl.handle.stop(wait=True, timeout=60)
    demo.close()


def probe_typed(client, response: str):
    row = dashboard.EXAMPLE  # an embedded-task row: its contexts fit the tiny model's 256 positions
    return client.predict("typed", None, None, 0, row.prompt, row.context, row.answer, response, 1.0, "", "kl", 0,
                          api_name="/probe")


def test_a_huge_typed_response_is_refused_at_once_and_the_run_goes_on(live):
    ctl, client = live
    step = ctl.handle.step
    t0 = time.monotonic()
    where = probe_typed(client, "1" * 1_000_000)[0]
    assert time.monotonic() - t0 < 10
    assert "Not probed" in where and "1,000,000 characters" in where and "at most 100,000" in where
    where = probe_typed(client, "1" * 5000)[0]
    assert "Not probed" in where and "the response is 5001 tokens" in where and "max_position_embeddings" in where
    assert "Asked the live run" in probe_typed(client, "\\boxed{405}")[0]
    wait_for(lambda: ctl.handle.step > step, timeout=120, what="the run to keep training")


@pytest.mark.parametrize("problems, samples, needle", [
    (8, 10**9, "samples per problem is 1000000000; choose 1 to 64"),
    (8, 10**5, "samples per problem is 100000; choose 1 to 64"),
    (10**6, 4, "problems is 1000000; choose 1 to 256"),
])
def test_absurd_gap_requests_are_refused_naming_the_bound(live, problems, samples, needle):
    _, client = live
    t0 = time.monotonic()
    answer = client.predict(problems, samples, "", api_name="/context_gap")
    assert "Not measured" in answer and needle in answer, answer
    assert time.monotonic() - t0 < 10


def test_stop_ends_a_long_gap_measurement_within_seconds(live):
    ctl, client = live
    job = client.submit(20, 64, "", api_name="/context_gap")  # 1280 sequences x 160 tokens, 8 generations
    time.sleep(3.0)
    assert not job.done(), "the measurement ended before Stop: make it longer"
    t0 = time.monotonic()
    client.predict(api_name="/stop")
    answer = job.result(timeout=60)
    took = time.monotonic() - t0
    assert took < 10, f"the measurement went on for {took:.1f} s after Stop"
    # under load the step in flight may still hold the question back: then it is cancelled before it starts
    assert "Not measured" in answer and ("stop requested during" in answer or "before the question reached" in answer)
    wait_for(lambda: not ctl.handle.alive, timeout=60, what="the run to end")
    assert ctl.handle.status == "stopped" and kinds(ctl.handle.run_dir)[-2:] == ["checkpoint", "stopped"]


# ---------------- items 4, 8 and 11: checkpoints ----------------
@pytest.fixture
def two_checkpoints(tiny_model_dir, tmp_path):
    """A finished 2-step run with checkpoints after steps 1 and 2."""
    handle = RunHandle(tiny_config(tiny_model_dir, tmp_path / "run", run__steps=2, run__save_every=1)).start()
    handle.join(timeout=300)
    assert handle.status == "finished", handle.error
    return handle


def resume(handle, steps=3) -> RunHandle:
    cfg = tiny_config(handle.cfg.model.name, handle.run_dir, run__steps=steps, run__save_every=1)
    again = RunHandle(cfg, resume=True).start()
    again.join(timeout=300)
    return again


@pytest.mark.parametrize("damage, file", [
    (lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]), "model/model.safetensors"),
    (lambda p: p.write_bytes(b""), STATE_FILE),
])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_and_says_which(two_checkpoints, damage, file):
    handle = two_checkpoints
    newest = handle.run_dir / "checkpoints" / "step_000002"
    damage(newest / file)
    again = resume(handle)
    assert again.status == "finished", again.error
    skipped = [e for e in events(handle.run_dir) if e["event"] == "checkpoint_skipped"]
    assert len(skipped) == 1 and skipped[0]["checkpoint"] == str(newest) and str(newest / file) in skipped[0]["reason"]
    assert [e for e in events(handle.run_dir) if e["event"] == "resume_from"][-1]["step"] == 1


def test_no_checkpoint_that_verifies_is_an_error_naming_each_file(two_checkpoints):
    handle = two_checkpoints
    for name in ("step_000001", "step_000002"):
        (handle.run_dir / "checkpoints" / name / STATE_FILE).write_bytes(b"")
    again = resume(handle)
    assert again.status == "crashed"
    assert "no checkpoint verifies" in again.error
    for name in ("step_000001", "step_000002"):
        assert str(handle.run_dir / "checkpoints" / name / STATE_FILE) in again.error


def test_the_final_checkpoint_is_saved_once(two_checkpoints):
    saved = [e["step"] for e in events(two_checkpoints.run_dir) if e["event"] == "checkpoint"]
    assert saved == [1, 2]


def test_a_complete_copy_left_by_a_crash_mid_swap_is_resumed_from(two_checkpoints):
    handle = two_checkpoints
    root = handle.run_dir / "checkpoints"
    (root / "step_000002").rename(root / ".tmp_step_000002")  # the old copy deleted, the new one not yet renamed
    assert latest_checkpoint(handle.run_dir) == root / ".tmp_step_000002"
    again = resume(handle)
    assert again.status == "finished", again.error
    assert [e for e in events(handle.run_dir) if e["event"] == "resume_from"][-1]["step"] == 2
    assert sorted(p.name for p in root.iterdir()) == ["step_000002", "step_000003"]


def test_checkpoints_order_by_step_number_past_999999(tiny_model_dir, tmp_path):
    trainer = build_trainer(tiny_config(tiny_model_dir, tmp_path), RecordStream(tmp_path), progress=False)
    try:
        for step in (999_998, 999_999, 1_000_000, 1_000_001):
            trainer.step = step
            save_checkpoint(trainer, tmp_path, keep=2)
    finally:
        trainer.verifier.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1000000", "step_1000001"]
    assert latest_checkpoint(tmp_path).name == "step_1000001"
    manifest = json.loads((tmp_path / "checkpoints" / "step_1000001" / MANIFEST_FILE).read_text())
    assert manifest["step"] == 1_000_001 and manifest["files"][STATE_FILE]["bytes"] > 0
    shutil.rmtree(tmp_path / "checkpoints")
