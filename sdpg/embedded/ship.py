"""Rebuild the warm-started embedded models that ship with the project: `python -m sdpg.embedded.ship`.

Design choices:
- Each task's default recipe (`embedded_settings(None, DataConfig(task=...))`) is warm-started by the project's
  own code through the cache (an entry already cached is reused), then copied to `SHIPPED_DIR/<task>`.
- Weights are stored in float32, as the cache entry holds them (3.2 MB a task): a run from a shipped model is bit
  for bit a run from the cache, so results made before the models shipped reproduce; the copy is skill-checked as
  stored (its greedy pass rate on the stopping check's problems reaches `stop_at`)
  and refused otherwise, so a rounding that costs the skill never ships.
- `warmstart.json` records the recipe's key (`embedded_key`): the loader uses a shipped model only while
  that key matches the code, and tests/test_ship.py fails until a changed recipe is rebuilt here.
- Only stale or missing tasks are rebuilt unless `--force`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpg.config import DataConfig
import sdpg.embedded.cache as cache
from sdpg.embedded.cache import (WARMSTART_FILE, embedded_entry, embedded_key, embedded_settings, read_warmstart_report,
                                 shipped_entry)
from sdpg.embedded.warmstart import WarmStartConfig, skill_check
from sdpg.tasks import TASKS

SHIPPED_DTYPE = torch.float32
SHIPPED_TASKS = ("add", "reasoning", "sparse")
"""tasks whose model ships: every task, each warm-started to its skill check (`sparse` to its onset of learning, 0.05
greedy on unseen problems)"""


def shipped_recipe(task: str) -> WarmStartConfig:
    """The warm-start settings a run on `task` uses by default: the ones its shipped model must match."""
    return embedded_settings(None, DataConfig(task=task))


def load_entry(entry: str | Path) -> tuple[torch.nn.Module, object]:
    """An embedded entry's model (float32, eval mode) and tokenizer, the way a run loads them."""
    model = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(entry)


def ship(task: str, *, force: bool = False, progress: bool = True) -> Path:
    """Write `cache.SHIPPED_DIR/<task>` from the cache entry of its default recipe (warm-starting it if absent)."""
    warm_cfg, target = shipped_recipe(task), cache.SHIPPED_DIR / task
    if not force and shipped_entry(warm_cfg) is not None:
        if progress:
            print(f"{task}: shipped model is up to date ({embedded_key(warm_cfg)})")
        return target
    source = embedded_entry(warm_cfg=warm_cfg, shipped=False, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{task}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the shipped folder is readable like the rest of the checkout
    try:
        model, tokenizer = load_entry(source)
        model.to(SHIPPED_DTYPE).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        stored, stored_tokenizer = load_entry(staging)
        skill = skill_check(stored, stored_tokenizer, warm_cfg)
        if skill < warm_cfg.stop_at:
            raise SystemExit(f"{task}: the stored copy of {source} scores {skill:.3f} on the skill check, below its "
                             f"stop_at {warm_cfg.stop_at}; not shipped")
        report = read_warmstart_report(source) | {
            "key": embedded_key(warm_cfg),
            "shipped": {"dtype": str(SHIPPED_DTYPE).removeprefix("torch."), "skill_check": skill},
        }
        (staging / WARMSTART_FILE).write_text(json.dumps(report, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if progress:
        print(f"{task}: shipped {target} (skill check {skill:.3f} >= {warm_cfg.stop_at})")
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdpg.embedded.ship", description=__doc__.splitlines()[0])
    parser.add_argument("tasks", nargs="*", default=list(SHIPPED_TASKS),
                        help=f"tasks to ship (default: {list(SHIPPED_TASKS)}; any of {sorted(TASKS)})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the shipped model matches its recipe")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; known: {sorted(TASKS)}")
    for task in args.tasks:
        ship(task, force=args.force)


if __name__ == "__main__":
    main()
