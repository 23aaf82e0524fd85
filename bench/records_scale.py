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
  (`app.build_app` over a replay) answers one step's heatmap, overview, inspector and top-5 through
  `gradio_client`, for the first, a middle and the last step.
- Before: the same records as the JSON-lines version wrote them (lists, `[[token, prob], ...]` top-k), for
  `--before-steps` steps; its open is the old one (every line parsed into Python objects).
- 500 steps: from N steps and the measured per-step slopes (bytes, open time, RSS), unless `--steps 500`.

Command: `python bench/records_scale.py [--steps 50] [--before-steps 3]`; appends a section to bench/RESULTS.md.
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
stream = ctl.stream()
steps = stream.rollout_steps()
out = {"page_open_s": open_s, "views": {}}
for start in (0, 2000, 4000):  # the API's step dropdown takes no value it did not offer: the latest step, followed
    t0 = time.perf_counter()
    client.predict(None, None, True, "kl", 3, start + 10, 3, start, api_name="/refresh")
    out["views"][f"gradio_client /refresh, last step {steps[-1]}, window {start}"] = time.perf_counter() - t0
for step in (steps[0], steps[len(steps) // 2]):  # other steps: the same functions the page's step pick calls
    for start in (0, 4000):
        t0 = time.perf_counter()
        dashboard.selection_views(stream, step, 0, "kl", 3, start + 10, 3, start)
        dashboard.overview_view(stream, step, 0, "kl", start)
        out["views"][f"in the page process, step {step}, window {start}"] = time.perf_counter() - t0
out["page_rss_mb"] = hwm_mb()
demo.close()
print(json.dumps(out))
"""


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
    ap.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = ap.parse_args()
    tok = qwen_tokenizer()
    pool = np.unique(np.array(tok.encode(SAMPLE_TEXT * 3 + open(__file__).read()), dtype=np.int64))
    pool = np.concatenate([pool, np.arange(1000, 31000, 7)])  # (P,) common and rarer real ids
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
            if step in (10, 25, 50, 75, 100, 250, 500) or step == args.steps:
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
    report(args, build, write_s, rss, after_bytes, before_bytes, legacy_s, opened, opened_before, page,
           time.time() - t_start)


def report(args, build, write_s, rss, after_bytes, before_bytes, legacy_s, opened, before_open, page, wall) -> None:
    n, nb = args.steps, args.before_steps
    per_step, per_step_before = after_bytes / n, before_bytes / nb
    slope_rss = opened["added_mb"] / n
    lines = [
        "", "## Rollout records at a real shape (issue 22)", "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, nproc {os.cpu_count()}, load average "
        f"{os.getloadavg()[0]:.1f}; whole script {wall / 60:.1f} min. Shape: {GROUPS} recorded groups x {G} x {T} "
        f"tokens per step ({GROUPS * G * T:,} tokens), real Qwen3 vocabulary (151,669 ids, head padded to "
        f"{QWEN3_VOCAB:,}), top-{K} for student and teacher. Random values (barely compressible: an upper bound on "
        f"bytes). Command: `python bench/records_scale.py --steps {n} --before-steps {nb}`. Targets: {TARGETS}.", "",
        "| measure | before (JSON lines) | after (shards) | target |", "|---|---|---|---|",
        f"| bytes on disk per step | {per_step_before / 1e6:.1f} MB | {per_step / 1e6:.2f} MB | ≤ 6 MB |",
        f"| write per step (median) | {np.median(legacy_s):.2f} s (per-token lists and JSON) | "
        f"{np.median(write_s):.2f} s (pack, compress, fsync) | |",
        f"| building per step (builder, H {H}, V {QWEN3_VOCAB:,}) | | {build['per_step_s']:.0f} s "
        f"(measured on {build['tokens']} tokens: {build['seconds']:.2f} s, x {GROUPS * G * T // build['tokens']}) | |",
        f"| open the run: {nb} steps before, {n} after (after imports) | {before_open['open_s']:.1f} s, peak RSS "
        f"{before_open['peak_rss_mb']:.0f} MB (+{before_open['added_mb']:.0f}) | {opened['open_s']:.2f} s, peak RSS "
        f"{opened['peak_rss_mb']:.0f} MB (+{opened['added_mb']:.0f} by the open) | |",
        f"| open, 500 steps (linear in steps from the above) | {before_open['open_s'] / nb * 500:.0f} s, "
        f"{before_open['added_mb'] / nb * 500 / 1024:.0f} GB | {opened['open_s'] / n * 500:.2f} s, "
        f"{opened['peak_rss_mb'] - opened['added_mb'] + slope_rss * 500:.0f} MB peak RSS | ≤ 5 s, ≤ 1.5 GB |",
        f"| page: replay opened in the page process | | {page['page_open_s']:.2f} s, page peak RSS "
        f"{page['page_rss_mb']:.0f} MB | |",
        f"| writer process RSS at steps {', '.join(map(str, rss))} (live record cache bounded at 256 MiB, "
        f"~{GROUPS * G * T * 95 / 2**20:.1f} MiB a step: full from step ~{int(256 / (GROUPS * G * T * 95 / 2**20))}) | | "
        f"{', '.join(f'{v:.0f}' for v in rss.values())} MB | flat ± 10 % |",
    ]
    lines += ["", "One step's views through `gradio_client` (`/refresh`: heatmap window, overview, advantage histogram, "
              "inspector card, top-5 at a token in the window, what-if), seconds; the first call is the fresh page's "
              "first (it reads the step's shard):", "",
              "| step, window start | seconds | target |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | ≤ 1 s |" for k, v in page["views"].items()]
    lines += ["", "The builder's cost is one vocabulary scan of the recorded tokens (student and teacher rows at once): "
              "the same LM-head work a step's teacher forward already does per token, so its share of a real-shape step "
              "is the recorded share of the step's tokens times the head's share of a forward; on a CPU the scan of "
              "65,536 tokens is minutes, as the row above shows.", ""]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
