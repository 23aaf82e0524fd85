"""The committed comparison results (`docs/science/compare-*.json`, `tuned-*.json`) as runs the comparison views draw.

Design choices:
- A fresh clone has no run directories, but it has the comparison experiments' results: per variant and seed,
  the training curves and held-out evaluations. Each (file, variant) becomes one choice, "science:<file>::<variant>",
  that loads as one run dict per seed in the shape of `sdpg.runs.load_run`, so the Compare tab shows a
  finished comparison before anything is trained.
- A tuned comparison (`experiments.tune`) offers its Stage 2 runs only: every variant at its chosen learning rate
  on the fresh seeds, the runs its verdicts rest on. The first look is the demo task's tuned comparison, its
  baseline against gated SDPG; without one (Stage 2 not run), the untuned comparison of the demo task.
- The config of such a run holds what the file says: the variant's settings over the file's task and context.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

SCIENCE_DIR = Path(__file__).resolve().parents[1] / "docs" / "science"
PREFIX = "science:"
FIRST_LOOK_TASK = "add"
"""the task whose tuned comparison the first look shows when the caller names none (the page passes its demo task)"""
UNTUNED_FIRST_LOOK = ("compare-reasoning.json::grpo", "compare-reasoning.json::sdpg")
"""the first look without a tuned comparison: GRPO against gated SDPG on the demo task, every seed"""
PATTERNS = ("compare-*.json", "tuned-*.json")


def contents(data: dict) -> dict:
    """A results file as {"task", "context", "variants", "runs", "curves", "evals"}: a comparison file as it is, a tuned
    comparison's Stage 2 (no variants when Stage 2 has not run)."""
    if "meta" not in data:
        return data
    stage2 = data.get("confirm") is not None
    return {"task": data["meta"]["task"], "context": data.get("context"),
            "variants": data.get("variants", {}) if stage2 else {}, "runs": data.get("confirm_runs", []),
            "curves": data.get("curves", []), "evals": [e for e in data.get("evals", []) if e.get("stage") != "tune"]}


def _files(science_dir: Path | None) -> list[Path]:
    return sorted(p for pattern in PATTERNS for p in (science_dir or SCIENCE_DIR).glob(pattern))


def published_choices(science_dir: Path | None = None) -> list[tuple[str, str]]:
    """(label, value) for every variant of every committed results file."""
    choices = []
    for path in _files(science_dir):
        data = contents(json.loads(path.read_text()))
        stage = " (tuned, Stage 2)" if path.name.startswith("tuned-") else ""
        for variant in data.get("variants", {}):
            seeds = len({r["seed"] for r in data.get("runs", []) if r.get("variant") == variant})
            label = f"committed result · {path.stem.removeprefix('compare-')}{stage} · {variant} ({seeds} seeds)"
            choices.append((label, f"{PREFIX}{path.name}::{variant}"))
    return choices


def first_look(science_dir: Path | None = None, task: str = FIRST_LOOK_TASK) -> list[str]:
    """The choices the Compare tab starts with: `task`'s tuned comparison (its baseline and gated SDPG, each at its
    chosen rate) when Stage 2 has run, else `UNTUNED_FIRST_LOOK` where its file is there."""
    folder = science_dir or SCIENCE_DIR
    tuned = folder / f"tuned-{task}.json"
    if tuned.is_file():
        data = json.loads(tuned.read_text())
        stats = data.get("confirm")
        if stats is not None and "sdpg" in stats["variants"] and data.get("variants"):
            picks = [stats["baseline"], "sdpg"]
            tags = {name: f"{name}-lr{stats['variants'][name]['lr']:g}" for name in picks}
            return [f"{PREFIX}{tuned.name}::{tags[name]}" for name in picks if tags[name] in data["variants"]]
    return [PREFIX + c for c in UNTUNED_FIRST_LOOK if (folder / c.partition("::")[0]).is_file()]


def is_published(choice: str) -> bool:
    return str(choice).startswith(PREFIX)


def load_published(choice: str, science_dir: Path | None = None) -> list[dict]:
    """The runs (one per seed) of a "science:<file>::<variant>" choice; ValueError names what is missing."""
    name, _, variant = str(choice).removeprefix(PREFIX).partition("::")
    path = (science_dir or SCIENCE_DIR) / Path(name).name
    if not path.is_file():
        raise ValueError(f"committed results file {name!r} is not in {path.parent}")
    data = contents(json.loads(path.read_text()))
    if variant not in data.get("variants", {}):
        raise ValueError(f"{name} has no variant {variant!r}; it has {sorted(data.get('variants', {}))}")
    settings = data["variants"][variant]["settings"]
    config = {"data": {"task": data.get("task")}, "teacher": {"context": data.get("context")}}
    for key, value in settings.items():
        section, field = key.split(".", 1)
        config.setdefault(section, {})[field] = value
    task = path.stem.removeprefix("compare-")
    return [_run(data, task, variant, run, config) for run in data["runs"] if run["variant"] == variant]


def _run(data: dict, task: str, variant: str, run: dict, config: dict) -> dict:
    seed = run["seed"]
    rows: dict[int, dict] = {}
    for table in ("curves", "evals"):
        for row in data.get(table, []):
            if row["variant"] == variant and row["seed"] == seed:
                rows.setdefault(row["step"], {"step": row["step"]}).update(
                    {k: v for k, v in row.items() if k not in ("variant", "seed")})
    return {"name": f"{task} · {variant} s{seed}", "run_dir": f"{PREFIX}{task}/{variant}-s{seed}",
            "method": config["loss"]["method"], "seed": seed, "status": run.get("status", "finished"),
            "error": run.get("error"), "config": config, "metrics": [rows[s] for s in sorted(rows)],
            "wall_s": math.nan, "summary": run.get("summary", {})}
