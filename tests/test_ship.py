"""The embedded models that ship with the project: skilled, matching their recipe, and ignored when stale."""
import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

import sdpg.embedded.cache as cache
import sdpg.embedded.ship as ship
from sdpg.config import ModelConfig
from sdpg.embedded.cache import WARMSTART_FILE, embedded_entry, embedded_key, read_warmstart_report, shipped_entry
from sdpg.embedded.warmstart import skill_check
from sdpg.models import load_model_and_tokenizer
from sdpg.tasks import TASKS
from test_warmstart import TINY, entries_in

MAX_SHIPPED_BYTES = 4_500_000
"""one task's shipped folder (float32 weights of the ~1M-parameter model, tokenizer, report)"""
REBUILD = "rebuild with `python -m sdpg.embedded.ship`"


@pytest.mark.parametrize("task", ship.SHIPPED_TASKS)
def test_each_task_ships_a_model_built_from_the_current_recipe(task):
    recipe = ship.shipped_recipe(task)
    folder = cache.SHIPPED_DIR / task
    assert (folder / WARMSTART_FILE).is_file(), f"no shipped model for {task}: {REBUILD}"
    assert read_warmstart_report(folder)["key"] == embedded_key(recipe), f"{task}'s recipe changed: {REBUILD}"
    assert shipped_entry(recipe) == folder
    assert sum(f.stat().st_size for f in folder.iterdir()) < MAX_SHIPPED_BYTES
    with safe_open(folder / "model.safetensors", "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float32}


@pytest.mark.parametrize("task", ship.SHIPPED_TASKS)
def test_each_shipped_model_passes_its_tasks_skill_check(task):
    recipe = ship.shipped_recipe(task)
    model, tokenizer = ship.load_entry(cache.SHIPPED_DIR / task)
    skill = skill_check(model, tokenizer, recipe)
    assert skill >= recipe.stop_at
    assert skill == pytest.approx(read_warmstart_report(cache.SHIPPED_DIR / task)["shipped"]["skill_check"], abs=0.02)


def test_the_page_and_cli_default_tasks_ship():
    # what a newcomer starts: the page's demo task and the CLI's default task
    assert {"reasoning", "add"} <= set(ship.SHIPPED_TASKS) <= set(TASKS)


def test_a_changed_recipe_does_not_match_the_shipped_model():
    recipe = ship.shipped_recipe("reasoning")
    assert shipped_entry(recipe) is not None
    assert shipped_entry(replace(recipe, lr=recipe.lr / 2)) is None
    assert shipped_entry(replace(recipe, model=replace(recipe.model, num_layers=2))) is None


def test_a_run_loads_the_shipped_model_without_warm_starting_or_caching(tmp_path, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the shipped model should have been loaded")

    monkeypatch.setattr(cache, "warm_start", no_training)
    model, _ = load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path, warm_cfg=ship.shipped_recipe("reasoning"),
                                        progress=False)
    assert model.dtype == torch.float32 and list(tmp_path.iterdir()) == []


def fake_shipped(root, key):
    (root / "add").mkdir(parents=True)
    (root / "add" / WARMSTART_FILE).write_text(json.dumps({"key": key}))


def test_absent_or_stale_shipped_models_fall_back_to_the_cache_and_the_warm_start(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "absent")
    built = embedded_entry(cache_dir=tmp_path / "cache", warm_cfg=TINY, progress=False)
    assert built.parent == tmp_path / "cache" and (built / WARMSTART_FILE).is_file()

    fake_shipped(tmp_path / "stale", "0123456789abcdef")
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "stale")
    assert embedded_entry(cache_dir=tmp_path / "cache", warm_cfg=TINY, progress=False) == built

    fake_shipped(tmp_path / "fresh", embedded_key(TINY))
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "fresh")
    assert embedded_entry(cache_dir=tmp_path / "cache", warm_cfg=TINY, progress=False) == tmp_path / "fresh" / "add"
    assert embedded_entry(cache_dir=tmp_path / "cache", warm_cfg=TINY, progress=False, shipped=False) == built


def test_the_ship_command_writes_a_matching_float32_copy_and_refuses_an_unskilled_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cache, "SHIPPED_DIR", tmp_path / "shipped")
    monkeypatch.setenv("SDPG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ship, "shipped_recipe", lambda task: replace(TINY, stop_at=0.0))
    ship.main(["add"])
    folder = tmp_path / "shipped" / "add"
    assert shipped_entry(replace(TINY, stop_at=0.0)) == folder
    assert read_warmstart_report(folder)["shipped"]["dtype"] == "float32"
    ship.main(["add"])
    assert "up to date" in capsys.readouterr().out

    monkeypatch.setattr(ship, "shipped_recipe", lambda task: replace(TINY, stop_at=1.0))
    with pytest.raises(SystemExit, match="not shipped"):
        ship.main(["add"])
    assert entries_in(tmp_path / "shipped") == [folder]
    with pytest.raises(SystemExit):
        ship.main(["nosuchtask"])
