"""Rollout records at a real shape: the record builder, the writer, replay and the page, before (JSON lines) and after.

Shape (issue 22): 2 recorded groups x 8 responses x 4096 tokens per step = 65,536 recorded tokens, real Qwen3
vocabulary (`tests/fixtures/qwen_vocab.py`, offline), top-5 for student and teacher.

What runs, and what is extrapolated (said in the table):
- Builder: `sdpg.record_build.token_records` on a random Qwen3-0.6B-shaped head (H 1024, V 151,936) for
  `--build-tokens` recorded tokens (one vocabulary scan, as a micro-batch does); its per-token time times 65,536
  is the step's building cost. The full 65,536 would take minutes per step on 2 CPU cores.
- Writer: N steps of the full shape through `RecordStream.emit_rollouts`, the responses built as the builder
  returns them (numpy arrays, `TopK` of real Qwen ids) with random values; random floats barely compress, so
  bytes per step are an upper bound.
- Replay: a fresh process opens the run (`RecordStream.open`) and reports time and peak RSS; then the page
  (`app.build_app` over a replay, its own process) answers through `gradio_client`: a fresh page's first `/refresh`
  (every figure of the tick, the latest step followed), then `/on_step` (the step picker: that step's shard read and
  its views drawn) for the first, a middle and the last step at token windows 0 and 4000. Each call draws: a
  `/refresh` repeated in one session returns nothing new (the session's `gr.State` remembers the version).
- Live (`--live-steps M`): the page process hosts a live run (a handle whose thread writes M synthetic steps of the
  same shape through `RecordStream.emit_rollouts`, as a training step does, as fast as it can); a `gradio_client`
  here follows the latest step with `/refresh`; the page process's RSS is sampled when the run has written steps
  50, 100, 200, 300, 400, 500. The records are synthetic (random values, real ids), said so in the table.
- Before: the same records as the JSON-lines version wrote them (lists, `[[token, prob], ...]` top-k), for
  `--before-steps` steps; its open is the old one (every line parsed into Python objects).
- 500 steps: measured with `--steps 500` (~2.2 GB of shards in a temporary folder, deleted after); with fewer
  steps the 500-step open is the measured one scaled linearly, said so in the table.

Command: `python bench/records_scale.py [--steps 50] [--before-steps 3] [--live-steps 500]`; appends a section to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sdpg.record_build import token_records  # noqa: E402
from sdpg.record_store import TopK  # noqa: E402
from sdpg.records import RecordStream  # noqa: E402
from sdpg.vocab import string_table  # noqa: E402
from tests.fixtures.qwen_vocab import QWEN3_VOCAB, qwen_tokenizer  # noqa: E402

GROUPS, G, T, K, H = 2, 8, 4096, 5, 1024
TARGETS = "replay open ≤ 5 s and ≤ 1.5 GB peak RSS at 500 steps; views ≤ 1 s; ≤ 6 MB per step; records ≤ 5 % of a step"


def measure_builder(tok, n_tokens: int) -> dict:
    """Seconds per recorded token of the real builder on a random 0.6B-shaped head."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(QWEN3_VOCAB, H, generator=g) * 0.02  # (V, H)
    ids = torch.tensor(tok.encode(SAMPLE_TEXT * 40)[:n_tokens])  # (n,)
    n = ids.shape[0]
    hs, ht = torch.randn(2, n, H, generator=g)  # (n, H) each
    stats = torch.randn(5, n, generator=g)  # (5, n)
    args = [{"student_h": hs, "teacher_h": ht, "ids": ids, "kl": stats[0].abs(), "logp": -stats[1].abs(),
             "entropy": stats[2].abs(), "old_logp": -stats[1].abs(), "ref_logp": -stats[3].abs(),
             "sampler_logp": -stats[4].abs()}]
    token_records(tok, weight[:1000], 1.0, [{k: (v[:8] if torch.is_tensor(v) else v) for k, v in args[0].items()}])
    t0 = time.perf_counter()
    token_records(tok, weight, 1.0, args)
    seconds = time.perf_counter() - t0
    return {"tokens": n, "seconds": seconds, "per_step_s": seconds / n * GROUPS * G * T}


SAMPLE_TEXT = ("Let x be the number of apples. Then 3x + 5 = 20, so x = 5. 答案是 \\boxed{5}. "
               "We check: 3·5 + 5 = 20 ✓.\n\n")


def token_pool(tok) -> np.ndarray:
    """(P,) real Qwen ids the synthetic responses draw from: common ones (this file's text) and rarer ones."""
    pool = np.unique(np.array(tok.encode(SAMPLE_TEXT * 3 + open(__file__).read()), dtype=np.int64))
    return np.concatenate([pool, np.arange(1000, 31000, 7)])


def make_step(tok, step: int, pool: np.ndarray) -> list[dict]:
    """One step's recorded groups as the builder returns them, with random values and real Qwen token ids."""
    rng = np.random.default_rng(step)
    table = string_table(tok, pool)
    groups = []
    for gi in range(GROUPS):
        responses = []
        for i in range(G):
            ids = pool[rng.integers(0, pool.size, T)].astype(np.int32)  # (T,)
            top = pool[rng.integers(0, pool.size, (T, K))].astype(np.int32)  # (T, K)
            top[:, 0] = ids
            probs = np.sort(rng.dirichlet(np.ones(K + 1), T)[:, :K], 1)[:, ::-1].astype(np.float16)  # (T, K)
            f = rng.standard_normal((7, T)).astype(np.float32)  # (7, T)
            responses.append({"text": tok.decode(ids[:400].tolist()), "reward": float(i % 2), "correct": bool(i % 2),
                              "status": "ok", "advantage": 1.0 if i % 2 else -1.0, "gate": bool(i % 2),
                              "token_ids": ids, "tokens": table[ids], "student_logp": -np.abs(f[0]),
                              "teacher_logp": -np.abs(f[1]), "old_logp": -np.abs(f[0]), "sampler_logp": -np.abs(f[2]),
                              "ref_logp": -np.abs(f[3]), "kl": np.abs(f[4]), "entropy": np.abs(f[5]),
                              "student_topk": TopK(top, probs, table), "teacher_topk": TopK(top[:, ::-1].copy(), probs,
                                                                                             table)})
        groups.append({"group": gi, "prompt": f"problem {gi} of step {step}", "context": "hint", "answer": "5",
                       "responses": responses})
    return groups


def legacy_line(step: int, group: dict) -> str:
    """A group as the JSON-lines version wrote it: per-token lists, top-k as [[token, prob], ...] per position."""
    def plain(r):
        out = {k: v for k, v in r.items() if k not in ("token_ids", "tokens", "student_topk", "teacher_topk")
               and not isinstance(v, np.ndarray)}
        out |= {k: v.tolist() for k, v in r.items() if isinstance(v, np.ndarray) and k not in ("token_ids", "tokens")}
        out["tokens"] = [str(t) for t in r["tokens"]]
        for f in ("student_topk", "teacher_topk"):
            out[f] = [[[t, round(p, 5)] for t, p in pairs] for pairs in r[f]]
        return out
    return json.dumps({"step": step, **group, "responses": [plain(r) for r in group["responses"]]}) + "\n"


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


HWM = """
def hwm_mb(key="VmHWM"):  # this process's own peak (ru_maxrss would carry the forking parent's over exec)
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
"""

OPEN_CHILD = HWM + """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from sdpg.records import RecordStream
base = hwm_mb("VmRSS")
t0 = time.perf_counter()
if sys.argv[3] == "after":
    stream = RecordStream.open(sys.argv[2])
    steps = stream.rollout_steps()
else:  # the JSON-lines version's open: every line into Python objects
    rows = [json.loads(line) for line in open(sys.argv[2] + "/rollouts.jsonl")]
    steps = sorted({r["step"] for r in rows})
print(json.dumps({"open_s": time.perf_counter() - t0, "steps": len(steps), "peak_rss_mb": hwm_mb(),
                  "added_mb": hwm_mb() - base}))
"""

PAGE_CHILD = HWM + """
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import app as dashboard
from gradio_client import Client
from tests.fixtures.waiting import free_port
ctl = dashboard.Controller(os.path.dirname(sys.argv[2]))
t0 = time.perf_counter()
assert ctl.open_replay(sys.argv[2])[1] == "ok", "replay did not open"
open_s = time.perf_counter() - t0
demo = dashboard.build_app(ctl)
for attempt in range(5):  # on a busy host gradio's own check of the fresh server can time out
    try:
        _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
        break
    except ValueError:
        demo.close()
        time.sleep(2)
client = Client(url, verbose=False)
steps = ctl.stream().rollout_steps()
out = {"page_open_s": open_s, "views": {}}
t0 = time.perf_counter()  # a fresh page's first tick: every tab's figures, the latest step followed
client.predict(None, None, True, "kl", 3, 10, 3, 0, api_name="/refresh")
out["views"][f"first /refresh of a fresh page (step {steps[-1]}, window 0)"] = time.perf_counter() - t0
for step in (steps[0], steps[len(steps) // 2], steps[-1]):  # the step picker: that step's shard read, all views
    for start in (0, 4000):
        t0 = time.perf_counter()
        client.predict(step, 0, "kl", 3, start + 10, 3, start, api_name="/on_step")
        out["views"][f"/on_step, step {step}, window {start}"] = time.perf_counter() - t0
out["page_rss_mb"] = hwm_mb()
demo.close()
print(json.dumps(out))
"""

LIVE_CHILD = """
import os, sys, threading, time
from pathlib import Path
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/bench"]
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
import app as dashboard
from records_scale import make_step, token_pool
from sdpg.records import RecordStream
from tests.fixtures.qwen_vocab import qwen_tokenizer
from tests.fixtures.waiting import free_port


class SyntheticRun:  # what the page reads of a live run (`lab.viewmodel.RunView`), its steps writing synthetic records
    def __init__(self, run_dir, steps):
        self.run_dir, self.total_steps, self.step, self.status, self.error = Path(run_dir), steps, 0, "running", None
        self.records = RecordStream(run_dir)
        self.records.write_config({"run": {"steps": steps}})

    def write(self, tok, pool):
        for step in range(1, self.total_steps + 1):
            self.records.emit_rollouts(step, make_step(tok, step, pool))
            self.records.emit_metrics(step, {"reward/mean": step % 7 / 7, "kl/distill_mean": 1 / step,
                                             "entropy/mean": 1.0, "loss/total": 0.1})
            self.step = step
        self.status = "finished"


tok = qwen_tokenizer()
run = SyntheticRun(sys.argv[2], int(sys.argv[3]))
ctl = dashboard.Controller(os.path.dirname(sys.argv[2]))
ctl.handle = run
demo = dashboard.build_app(ctl)
_, url, _ = dashboard.serve(demo, port=free_port(), block=False)
print("URL", url, flush=True)
sys.stdin.readline()  # the follower is connected
threading.Thread(target=run.write, args=(tok, token_pool(tok)), daemon=True).start()
sys.stdin.readline()  # the follower has seen the last step
demo.close()
"""


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def live_page(run_dir: Path, steps: int, marks: list[int]) -> dict:
    """The page process hosting a live run that writes `steps` synthetic real-shape steps; a gradio_client here
    follows the latest step through `/refresh`; the page's RSS when the run has written each step of `marks`."""
    from gradio_client import Client
    page = subprocess.Popen([sys.executable, "-c", LIVE_CHILD, str(ROOT), str(run_dir), str(steps)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = next(line.split()[1] for line in page.stdout if line.startswith("URL "))
        client = Client(url, verbose=False)
        page.stdin.write("go\n")
        page.stdin.flush()
        index, rss, seen, ticks = run_dir / "rollouts" / "index.jsonl", {}, 0, []
        while seen < steps:
            t0 = time.perf_counter()
            out = client.predict(None, None, True, "kl", 3, 10, 3, 0, api_name="/refresh")
            ticks.append(time.perf_counter() - t0)
            shown = out[3].get("value") if isinstance(out[3], dict) else out[3]  # the step dropdown's update
            seen = max(seen, int(shown or 0))
            written = sum(1 for _ in open(index)) if index.exists() else 0
            for mark in marks:
                if mark not in rss and written >= mark:
                    rss[mark] = proc_rss_mb(page.pid)
            print(f"live: written {written}, page shows {seen}, RSS {proc_rss_mb(page.pid):.0f} MB", flush=True)
        page.stdin.write("done\n")
        page.stdin.flush()
        page.wait(timeout=120)
    finally:
        page.kill()
    return {"rss": rss, "ticks": ticks}


def child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), *args], capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--before-steps", type=int, default=3)
    ap.add_argument("--build-tokens", type=int, default=512)
    ap.add_argument("--live-steps", type=int, default=0,
                    help="steps of the live mode (the page hosting a run that writes synthetic records); 0: none")
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    tok = qwen_tokenizer()
    pool = token_pool(tok)
    t_start = time.time()
    build = measure_builder(tok, args.build_tokens)
    print(f"builder: {build['tokens']} tokens in {build['seconds']:.2f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        after, before = Path(tmp) / "runs" / "after", Path(tmp) / "runs" / "before"
        live = RecordStream(after)
        live.write_config({"run": {"steps": args.steps}})
        write_s, rss = [], {}
        for step in range(1, args.steps + 1):
            groups = make_step(tok, step, pool)
            t0 = time.perf_counter()
            live.emit_rollouts(step, groups)
            write_s.append(time.perf_counter() - t0)
            live.emit_metrics(step, {"reward/mean": 0.5})
            if step in (10, 25, 50, 100, 200, 300, 400, 500) or step == args.steps:
                rss[step] = rss_mb()
            print(f"step {step}: wrote in {write_s[-1]:.2f} s, RSS {rss_mb():.0f} MB", flush=True)
        live.emit_event("finished", step=args.steps)
        after_bytes = dir_bytes(after / "rollouts")
        before.mkdir(parents=True)
        legacy_s = []
        with open(before / "rollouts.jsonl", "w") as f:
            for step in range(1, args.before_steps + 1):
                groups = make_step(tok, step, pool)
                t0 = time.perf_counter()
                f.write("".join(legacy_line(step, g) for g in groups))
                legacy_s.append(time.perf_counter() - t0)
        (before / "metrics.jsonl").write_text("")
        before_bytes = (before / "rollouts.jsonl").stat().st_size
        opened = child(OPEN_CHILD, str(after), "after")
        opened_before = child(OPEN_CHILD, str(before), "before")
        page = child(PAGE_CHILD, str(after))
    live_run = None
    if args.live_steps:
        with tempfile.TemporaryDirectory() as tmp:  # after the replay's shards are gone: one run on disk at a time
            marks = sorted({m for m in (50, 100, 200, 300, 400, 500) if m <= args.live_steps} | {args.live_steps})
            live_run = live_page(Path(tmp) / "runs" / "live", args.live_steps, marks)
    report(args, build, write_s, rss, after_bytes, before_bytes, legacy_s, opened, opened_before, page, live_run,
           time.time() - t_start)


def report(args, build, write_s, rss, after_bytes, before_bytes, legacy_s, opened, before_open, page, live_run,
           wall) -> None:
    n, nb = args.steps, args.before_steps
    per_step, per_step_before = after_bytes / n, before_bytes / nb
    slope_rss = opened["added_mb"] / n
    lines = [
        "", "## Rollout records at a real shape (issue 22)", "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}; whole script {wall / 60:.1f} min. Shape: {GROUPS} recorded groups x {G} x {T} "
        f"tokens per step ({GROUPS * G * T:,} tokens), real Qwen3 vocabulary (151,669 ids, head padded to "
        f"{QWEN3_VOCAB:,}), top-{K} for student and teacher. Random values (barely compressible: an upper bound on "
        f"bytes). Command: `python bench/records_scale.py --steps {n} --before-steps {nb}"
        f"{f' --live-steps {args.live_steps}' if args.live_steps else ''}`. Targets: {TARGETS}.", "",
        "| measure | before (JSON lines) | after (shards) | target |", "|---|---|---|---|",
        f"| bytes on disk per step | {per_step_before / 1e6:.1f} MB | {per_step / 1e6:.2f} MB | ≤ 6 MB |",
        f"| write per step (median) | {np.median(legacy_s):.2f} s (per-token lists and JSON) | "
        f"{np.median(write_s):.2f} s (pack, compress, fsync) | |",
        f"| building per step (builder, H {H}, V {QWEN3_VOCAB:,}) | | {build['per_step_s']:.0f} s "
        f"(measured on {build['tokens']} tokens: {build['seconds']:.2f} s, x {GROUPS * G * T // build['tokens']}) | |",
        f"| open the run: {nb} steps before, {n} after (after imports) | {before_open['open_s']:.1f} s, peak RSS "
        f"{before_open['peak_rss_mb']:.0f} MB (+{before_open['added_mb']:.0f}) | {opened['open_s']:.2f} s, peak RSS "
        f"{opened['peak_rss_mb']:.0f} MB (+{opened['added_mb']:.0f} by the open) | |",
        f"| open, 500 steps ({'measured: the row above' if n >= 500 else 'linear in steps from the above'}; "
        f"before: linear) | {before_open['open_s'] / nb * 500:.0f} s, {before_open['added_mb'] / nb * 500 / 1024:.0f} GB"
        f" | {opened['open_s'] / n * 500 if n < 500 else opened['open_s']:.2f} s, "
        f"{opened['peak_rss_mb'] - opened['added_mb'] + slope_rss * 500 if n < 500 else opened['peak_rss_mb']:.0f} MB "
        f"peak RSS | ≤ 5 s, ≤ 1.5 GB |",
        f"| page: replay opened in the page process | | {page['page_open_s']:.2f} s, page peak RSS "
        f"{page['page_rss_mb']:.0f} MB | |",
        f"| writer process RSS at steps {', '.join(map(str, rss))} (live record cache bounded at 256 MiB, "
        f"~{GROUPS * G * T * 95 / 2**20:.1f} MiB a step: full from step ~{int(256 / (GROUPS * G * T * 95 / 2**20))}) | | "
        f"{', '.join(f'{v:.0f}' for v in rss.values())} MB | flat ± 10 % |",
    ]
    lines += ["", "Views through `gradio_client`, seconds. The first call is a fresh page's first `/refresh` (status card, "
              "training curves, advantage evolution and the latest step's views: heatmap window, overview, advantage "
              "histogram, inspector card, top-5, what-if); then `/on_step`, the step picker, reads that step's shard "
              "and draws its views at a token window:", "",
              "| call | seconds | target |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | ≤ 1 s |" for k, v in page["views"].items()]
    if live_run:
        marks = [m for m in live_run["rss"] if m >= 50]
        vals = [live_run["rss"][m] for m in marks]
        spread = (max(vals) - min(vals)) / min(vals) if vals else float("nan")
        lines += ["", f"Live page (`--live-steps {args.live_steps}`): the page process hosts a live run whose steps write "
                  "**synthetic** records of the shape above (random values, real ids) through `RecordStream.emit_rollouts`"
                  ", as a run's step does, as fast as they are made; a `gradio_client` follows the latest step with "
                  "`/refresh` (each answer draws that step's views). Page process RSS when the run had written each "
                  "step:", "", "| step | " + " | ".join(map(str, live_run["rss"])) + " | spread from step 50 | target |",
                  "|---|" + "---|" * (len(live_run["rss"]) + 2),
                  "| page RSS MB | " + " | ".join(f"{v:.0f}" for v in live_run["rss"].values())
                  + f" | {spread:+.1%} (max − min) / min | flat ± 10 % |", "",
                  f"The follower's `/refresh` calls while the run wrote: {len(live_run['ticks'])}, median "
                  f"{np.median(live_run['ticks']):.2f} s, slowest {max(live_run['ticks']):.2f} s."]
    lines += ["", "The builder's cost is one vocabulary scan of the recorded tokens (student and teacher rows at once); "
              "on a CPU the scan of 65,536 tokens is minutes, as the row above shows. Its share of a whole training "
              "step is measured by `bench/real_shape.py` (`time/records` against the step).", ""]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
