"""Measure how the run, its records and the page take concurrent viewers, kills and signals.

    PYTHONPATH=. python bench/reliability_runtime.py [--only readers,page,truncate,orphans,sigterm]

Prints one markdown table row per scenario (the figures in docs/reliability.md). It only uses interfaces
that older trees have too, so `PYTHONPATH=<an older checkout>` measures that tree the same way.
Child processes get their own session and are killed as a group, so nothing outlives the script.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.records import make_group, make_metrics_row  # noqa: E402
from sdpg.records import RecordStream  # noqa: E402

CODE = os.environ.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0]


def spawn(args: list[str], log: Path, cwd: str = CODE) -> subprocess.Popen:
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def readers(tmp: Path, rows: int = 2001, threads: int = 5) -> str:
    """Five reader threads refresh one stream while a writer appends `rows` metrics rows."""
    writer = RecordStream(tmp / "run")
    writer.emit_event("start")
    viewer = RecordStream.open(tmp / "run")
    done, errors = threading.Event(), []

    def read():
        while True:
            finished = done.is_set()
            try:
                viewer.refresh()
            except Exception as err:  # noqa: BLE001
                errors.append(type(err).__name__)
            if finished:
                return

    pool = [threading.Thread(target=read) for _ in range(threads)]
    for t in pool:
        t.start()
    for step in range(1, rows + 1):
        writer.emit_metrics(step, {"reward/mean": step / rows, "pad": "x" * 150})
    done.set()
    for t in pool:
        t.join()
    try:
        viewer.refresh()
    except Exception as err:  # noqa: BLE001
        errors.append(type(err).__name__)
    steps = [m["step"] for m in viewer.metrics()]
    exact = steps == list(range(1, rows + 1))
    return (f"| {threads} reader threads, one writer, {rows} rows | {len(steps)} rows read, {len(set(steps))} distinct, "
            f"{len(errors)} errors ({', '.join(sorted(set(errors))) or 'none'}); every row once: {exact} |")


def page(tmp: Path, clients: int = 5, seconds: float = 30.0) -> str:
    """`clients` gradio clients poll /refresh on a replay of a run that grows by one step every 0.1 s."""
    import app as dashboard
    from gradio_client import Client

    runs = tmp / "runs"
    ctl = dashboard.Controller(runs)
    demo = dashboard.build_app(ctl)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = dashboard.serve(demo, port=port, block=False)
    run_dir, stop = runs / "live", threading.Event()
    writer = RecordStream(run_dir)
    writer.emit_event("start")
    ctl.open_replay(str(run_dir))
    written = []

    def grow():
        step = 0
        while not stop.is_set():
            step += 1
            groups = [make_group(step, g) for g in range(2)]
            writer.emit_rollouts(step, groups)
            writer.emit_metrics(step, make_metrics_row(step, groups))
            written.append(step)
            time.sleep(0.1)

    errors, polls = [], []

    def poll(_):
        client = Client(url, verbose=False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                client.predict(None, None, True, "kl", 0, 0, 0, api_name="/refresh")
                polls.append(1)
            except Exception as err:  # noqa: BLE001
                errors.append(type(err).__name__)

    grower = threading.Thread(target=grow, daemon=True)
    grower.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(poll, range(clients)))
    stop.set()
    grower.join()
    try:
        ctl.stream().refresh()
        shown = [m["step"] for m in ctl.stream().metrics()]
    except Exception as err:  # noqa: BLE001
        shown = []
        errors.append(type(err).__name__)
    demo.close()
    return (f"| {clients} page clients polling /refresh for {seconds:g} s on a replay of a growing run | {len(polls)} polls, "
            f"{len(errors)} errors; replay shows {len(shown)} of {len(written)} steps, exactly once each: "
            f"{shown == written} |")


TRUNCATE_CHILD = """
import sys
from sdpg.records import RecordStream
stream = RecordStream(sys.argv[1])
print("loaded", flush=True)
stream.truncate_after(int(sys.argv[2]))
print("done", flush=True)
"""


def truncate(tmp: Path, trials: int = 10, steps: int = 400) -> str:
    """kill -9 a resume while it rewrites a ~40 MB rollouts.jsonl, at a random moment of the rewrite."""
    src = tmp / "src"
    writer = RecordStream(src)
    groups = [make_group(1, g) for g in range(2)]
    for step in range(1, steps + 1):
        writer.emit_rollouts(step, [{**g, "step": step, "pad": "y" * 50_000} for g in groups])
        writer.emit_metrics(step, make_metrics_row(step, groups))
    size = (src / "rollouts.jsonl").stat().st_size
    script = tmp / "child.py"
    script.write_text(TRUNCATE_CHILD)
    rewrite_s = _truncate_child(src, tmp / "calibrate", script, steps, kill_after=None)
    rng, rows = random.Random(0), []
    for when in ("uniform", "first change"):
        intact, sizes = 0, []
        for trial in range(trials):
            run = tmp / f"{when}-{trial}".replace(" ", "-")
            kill_after = rng.uniform(0.0, rewrite_s) if when == "uniform" else "change"
            _truncate_child(src, run, script, steps, kill_after=kill_after)
            n = len(RecordStream.open(run).rollout_steps())
            intact += n in (steps, steps // 2)  # the old file whole, or the new one complete
            sizes.append((run / "rollouts.jsonl").stat().st_size / 1e6)
        moment = (f"at {trials} moments drawn uniformly over the {rewrite_s:.1f} s rewrite" if when == "uniform" else
                  f"{trials} times, the moment rollouts.jsonl first changes on disk")
        rows.append(f"| kill -9 during a resume's rewrite of rollouts.jsonl ({size / 1e6:.1f} MB, {steps} steps), {moment} "
                    f"| history intact (all {steps} or exactly the kept {steps // 2} steps) in {intact}/{trials}; "
                    f"rollouts.jsonl after the kill {min(sizes):.1f}-{max(sizes):.1f} MB |")
    return "\n".join(rows)


def _truncate_child(src: Path, run: Path, script: Path, steps: int, kill_after) -> float:
    """Copy `src` to `run` and let a child truncate it to half; kill -9 it `kill_after` s into the rewrite,
    or ("change") as soon as rollouts.jsonl changes size or inode. Returns the seconds from start to end."""
    shutil.copytree(src, run)
    log, target = run.with_suffix(".log"), run / "rollouts.jsonl"
    before = os.stat(target)
    proc = spawn([str(script), str(run), str(steps // 2)], log)
    while "loaded" not in log.read_text() and proc.poll() is None:
        time.sleep(0.002)
    t0 = time.monotonic()
    if kill_after is None:
        proc.wait()
    elif kill_after == "change":
        while proc.poll() is None:
            now = os.stat(target)
            if (now.st_size, now.st_ino) != (before.st_size, before.st_ino):
                break
        kill_group(proc)
    else:
        time.sleep(kill_after)
        kill_group(proc)
    return time.monotonic() - t0


POOL_OWNER = """
import json, sys, time
from multiprocessing import resource_tracker
from sdpg.reward import MathVerifier

if __name__ == "__main__":
    verifier = MathVerifier(workers=2)
    verifier.score(["\\\\boxed{2}"], ["2"])
    pids = {"workers": [p.pid for p in verifier._pool.executor._processes.values()],
            "tracker": resource_tracker._resource_tracker._pid}
    open(sys.argv[1], "w").write(json.dumps(pids))
    time.sleep(300)
"""


def orphans(tmp: Path, wait_s: float = 20.0) -> str:
    """kill -9 a process that owns a 2-worker verifier pool; how long do its workers and resource tracker live?"""
    script, pids_file = tmp / "owner.py", tmp / "pids.json"
    script.write_text(POOL_OWNER)
    proc = spawn([str(script), str(pids_file)], tmp / "owner.log")
    try:
        while not (pids_file.exists() and pids_file.read_text()):
            time.sleep(0.1)
        pids = json.loads(pids_file.read_text())
        children = pids["workers"] + [pids["tracker"]]
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        while any(alive(p) for p in children) and time.monotonic() - t0 < wait_s:
            time.sleep(0.05)
        workers = sum(alive(p) for p in pids["workers"])
        tracker = alive(pids["tracker"])
        gone = (f"all gone after {time.monotonic() - t0:.2f} s" if not (workers or tracker) else
                f"still running after {wait_s:g} s: {workers} of 2 workers, resource tracker: {'yes' if tracker else 'no'}")
    finally:
        kill_group(proc)
    return f"| kill -9 of a process owning a verifier pool (2 workers + resource tracker) | {gone} |"


def sigterm(tmp: Path) -> str:
    """SIGTERM a CLI run on the tiny test model after its first step."""
    import torch

    from conftest import tiny_config
    from sdpg.embedded.model import TinyModelConfig, build_tiny_model
    from sdpg.embedded.tokenizer import build_char_tokenizer

    model_dir = tmp / "tiny"
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
                                                intermediate_size=128)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = tmp / "run"
    (tmp / "cfg.json").write_text(json.dumps(tiny_config(model_dir, run, run__steps=500).to_dict()))
    proc = spawn(["-m", "sdpg.train", "--config", str(tmp / "cfg.json"), "--quiet"], tmp / "cli.log")
    try:
        metrics = run / "metrics.jsonl"
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
            time.sleep(0.1)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
        took = time.monotonic() - t0
    finally:
        kill_group(proc)
    events = [json.loads(line)["event"] for line in (run / "events.jsonl").read_text().splitlines()]
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step_*")) if (run / "checkpoints").exists() else []
    return (f"| SIGTERM to `python -m sdpg.train` after step 1 | exit {rc} after {took:.1f} s; last events "
            f"{events[-2:]}; checkpoints {ckpts or 'none'} |")


SCENARIOS = {"readers": readers, "page": page, "truncate": truncate, "orphans": orphans, "sigterm": sigterm}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = ap.parse_args()
    print(f"code measured: {CODE}")
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            print(SCENARIOS[name](Path(tmp)), flush=True)
