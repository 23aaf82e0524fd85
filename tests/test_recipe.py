"""docs/paper-recipe.md is generated from the paper preset and stays in step with it."""
from pathlib import Path

from sdpg.config import TrainConfig, preset
from sdpg.recipe import SECTIONS, render

PAGE = Path(__file__).resolve().parent.parent / "docs" / "paper-recipe.md"


def test_the_committed_page_is_what_the_paper_preset_renders():
    assert PAGE.read_text() == render(preset("paper")), \
        "docs/paper-recipe.md is stale: run `python -m sdpg.recipe > docs/paper-recipe.md`"


def _row(page: str, name: str) -> list[str]:
    (line,) = [x for x in page.splitlines() if x.startswith(f"| {name}")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_the_matches_column_follows_the_preset():
    cfg = preset("paper")
    assert _row(render(cfg), "PPO clip high")[1:5] == ["0.2", "0.28", "0.2", "paper"]
    assert _row(render(cfg), "positive-advantage gate")[3:5] == ["on", "paper"]
    cfg.loss.clip_high, cfg.loss.gate = 0.28, False
    page = render(cfg)
    assert _row(page, "PPO clip high")[3:5] == ["0.28", "script"]
    assert _row(page, "positive-advantage gate")[3:5] == ["off", "script"]
    cfg.optim.lr = 3e-6
    assert _row(render(cfg), "learning rate")[3:5] == ["3e-06", "**neither**"]


def test_every_setting_reads_any_config():
    page = render(TrainConfig())  # the CPU defaults render too (nothing is hard-wired to the paper preset)
    assert sum(len(settings) for settings in SECTIONS.values()) == page.count("\n| ") - len(SECTIONS)  # less the header rows
