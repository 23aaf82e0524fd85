"""Refresh latency of the page with many viewers: 20 `gradio_client`s poll /refresh on one growing run.

    PYTHONPATH=. python bench/refresh_clients.py [--clients 20] [--seconds 40] [--steps 300]

The page runs in a process of its own (as it does for a classroom: the viewers' work is not the server's) and
replays a run that already has `--steps` steps and gains one step every 1.5 s (what a live run of the
embedded model writes), so every tick has something new to draw. Each client polls like the page's timer (one
/refresh, then a 1.5 s wait) for `--seconds`; the script prints one markdown table row: calls, mean / median /
95th percentile / max latency, the bytes of one answer and the load average at the start. Loopback only, a
bounded loop. It uses only interfaces older trees have too, so `PYTHONPATH=<an older checkout>` measures that
tree the same way.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
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

TICK_S = 1.5
"""the page's timer period (app.REFRESH_S) and the run's step period"""


def emit_step(writer: RecordStream, step: int) -> None:
    groups = [make_group(step, g) for g in range(2)]
    writer.emit_rollouts(step, groups)
    writer.emit_metrics(step, make_metrics_row(step, groups))


def serve(run_dir: Path, port: int) -> None:
    """The page replaying `run_dir`, in this process until it is killed (the measuring process is the clients')."""
    import app as dashboard

    ctl = dashboard.Controller(run_dir.parent)
    ctl.open_replay(str(run_dir))
    dashboard.serve(dashboard.build_app(ctl), port=port, block=True)


def measure(tmp: Path, clients: int, seconds: float, steps: int) -> str:
    from gradio_client import Client

    run_dir, stop = tmp / "runs" / "live", threading.Event()
    writer = RecordStream(run_dir)
    writer.emit_event("start")
    for step in range(1, steps + 1):
        emit_step(writer, step)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(run_dir), str(port)], env=os.environ,
                              stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                Client(url, verbose=False)
                break
            except Exception:  # noqa: BLE001 - not up yet
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((tmp / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        return _poll(url, writer, steps, stop, clients, seconds)
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def _poll(url: str, writer: RecordStream, steps: int, stop: threading.Event, clients: int, seconds: float) -> str:
    from gradio_client import Client

    def grow():
        step = steps
        while not stop.wait(TICK_S):
            step += 1
            emit_step(writer, step)

    latencies, sizes, errors = [], [], []

    def poll(_):
        client = Client(url, verbose=False)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                answer = client.predict(None, None, True, "kl", 0, 0, 0, api_name="/refresh")
                latencies.append(time.perf_counter() - t0)
                sizes.append(len(json.dumps(answer, default=str)))
            except Exception as err:  # noqa: BLE001 - counted, not hidden
                errors.append(type(err).__name__)
            time.sleep(TICK_S)

    load = os.getloadavg()[0]
    grower = threading.Thread(target=grow, daemon=True)
    grower.start()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(poll, range(clients)))
    stop.set()
    grower.join()
    lat = sorted(latencies)
    p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else float("nan")
    return (f"| {clients} clients, {seconds:g} s, run of {steps}+ steps growing 1 step / {TICK_S} s | {len(lat)} calls, "
            f"{len(errors)} errors | mean {statistics.fmean(lat):.2f} s, median {statistics.median(lat):.2f} s, "
            f"p95 {p95:.2f} s, max {lat[-1]:.2f} s | {max(sizes, default=0) / 1024:.0f} KiB | load {load:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--serve", nargs=2, metavar=("RUN_DIR", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return serve(Path(args.serve[0]), int(args.serve[1]))
    with tempfile.TemporaryDirectory() as tmp:
        print(measure(Path(tmp), args.clients, args.seconds, args.steps), flush=True)


if __name__ == "__main__":
    main()
