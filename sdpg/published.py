"""The committed comparison results (`docs/science/compare-*.json`) as runs the comparison views draw.

Design choices:
- A fresh clone has no run directories, but it has the comparison experiment's results: per variant and seed,
  the training curves and held-out evaluations. Each (file, variant) becomes one choice, "science:<file>::<variant>",
  that loads as one run dict per seed in the shape of `sdpg.runs.load_run`, so the Compare tab shows a
  finished comparison before anything is trained.
- The config of such a run holds what the file says: the variant's settings over the file's task and context.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

SCIENCE_DIR = Path(__file__).resolve().parents[1] / "docs" / "science"
PREFIX = "science:"
DEFAULT_CHOICES = ("compare-reasoning.json::grpo", "compare-reasoning.json::sdpg")
"""the first look: GRPO against gated SDPG on the demo task, every seed"""


def published_choices(science_dir: Path | None = None) -> list[tuple[str, str]]:
    """(label, value) for every variant of every committed comparison file."""
    choices = []
    for path in sorted((science_dir or SCIENCE_DIR).glob("compare-*.json")):
        data = json.loads(path.read_text())
        for variant in data.get("variants", {}):
            seeds = len({r["seed"] for r in data.get("runs", []) if r.get("variant") == variant})
            label = f"committed result · {path.stem.removeprefix('compare-')} · {variant} ({seeds} seeds)"
            choices.append((label, f"{PREFIX}{path.name}::{variant}"))
    return choices


def first_look(science_dir: Path | None = None) -> list[str]:
    """The choices the Compare tab starts with (`DEFAULT_CHOICES` whose file is there)."""
    return [PREFIX + c for c in DEFAULT_CHOICES if ((science_dir or SCIENCE_DIR) / c.partition("::")[0]).is_file()]


def is_published(choice: str) -> bool:
    return str(choice).startswith(PREFIX)


def load_published(choice: str, science_dir: Path | None = None) -> list[dict]:
    """The runs (one per seed) of a "science:<file>::<variant>" choice; ValueError names what is missing."""
    name, _, variant = str(choice).removeprefix(PREFIX).partition("::")
    path = (science_dir or SCIENCE_DIR) / Path(name).name
    if not path.is_file():
        raise ValueError(f"committed results file {name!r} is not in {path.parent}")
    data = json.loads(path.read_text())
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
