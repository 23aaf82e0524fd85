"""Recorded runs found and loaded next to their record stream: what the page, the comparison and the notebooks list.

Design choices:
- A run directory is a folder holding one of the record stream's files (metrics, events or config);
  `find_runs` walks a folder down to a depth (the comparison's `<out>/<variant>-s<seed>` is two levels),
  never into `checkpoints/`.
- `load_run` reads through `RecordStream.open`, so a bad line is skipped and counted as everywhere else, and
  takes the run's state from its lifecycle events (`sdpg.run.replay_status`): a crashed run says so after its
  process is gone.
- `run_summary` describes one run (final and best held-out pass@1, teacher pass@1, late-training means);
  statistics across runs and seeds (intervals, curve areas) belong to the experiment that compares them.

Shapes: none (this module handles records, not tensors).
"""
from __future__ import annotations

import math
import statistics
from pathlib import Path

from sdpg.records import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, RecordStream
from sdpg.run import replay_status

RECORD_FILES = (METRICS_FILE, EVENTS_FILE, CONFIG_FILE)
"""a folder holding any of these is a run directory"""
TAIL_FRACTION = 0.25
"""entropy, response length and distillation KL are averaged over this last fraction of training steps"""


def find_runs(root: str | Path, depth: int = 2) -> list[Path]:
    """Run directories under `root`, down to `depth` levels, in name order."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name == "checkpoints":
            continue
        if any((path / f).exists() for f in RECORD_FILES):
            found.append(path)
        elif depth > 1:
            found += find_runs(path, depth - 1)
    return found


def newest_runs(root: str | Path) -> list[Path]:
    """The run directories directly under `root`, the most recently changed first."""
    return sorted(find_runs(root, depth=1), key=lambda p: p.stat().st_mtime, reverse=True)


def load_run(run_dir: str | Path) -> dict:
    """One run for comparison views: name, method, seed, status, wall time, config, metrics rows and summary."""
    stream = RecordStream.open(run_dir)
    config, metrics, events = stream.config(), stream.metrics(), stream.events()
    walls = [e["wall"] for e in events if isinstance(e.get("wall"), (int, float))]
    steps = config.get("run", {}).get("steps") or max((m["step"] for m in metrics), default=0)
    status, error = replay_status(events)
    return {"name": Path(run_dir).name, "run_dir": str(run_dir), "method": config.get("loss", {}).get("method", "?"),
            "seed": config.get("run", {}).get("seed"), "status": status, "error": error, "config": config,
            "metrics": metrics, "wall_s": walls[-1] - walls[0] if len(walls) > 1 else math.nan,
            "summary": run_summary(metrics, steps)}


def run_summary(metrics: list[dict], steps: int) -> dict[str, float]:
    """Final and best held-out pass@1, final teacher pass@1, and late-training means of entropy, length and KL.

    "Final" is the evaluation at the last step; "best" the highest after step 0. Missing values are NaN.
    """
    evals = [m for m in metrics if "eval/pass@1" in m]
    final = next((m for m in reversed(evals) if m["step"] == steps), {})
    tail_from = steps - max(1, math.ceil(TAIL_FRACTION * steps))
    tail = [m for m in metrics if m["step"] > tail_from and "reward/mean" in m]

    def tail_mean(key):
        values = [m[key] for m in tail if isinstance(m.get(key), (int, float))]
        return statistics.fmean(values) if values else math.nan

    return {
        "final_pass@1": final.get("eval/pass@1", math.nan),
        "best_pass@1": max((m["eval/pass@1"] for m in evals if m["step"] > 0), default=math.nan),
        "teacher_pass@1": final.get("eval/teacher_pass@1", math.nan),
        "entropy": tail_mean("entropy/mean"),
        "response_length": tail_mean("response/length_mean"),
        "distill_kl": tail_mean("kl/distill_mean"),
    }
