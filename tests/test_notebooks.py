"""The notebooks run top to bottom, and are committed clean.

Design choices:
- Each notebook is executed with `nbclient` in a fresh `python3` kernel (the running interpreter), with
  its working directory set to `notebooks/`, as Jupyter would open it; any cell error fails the test.
- The notebooks read their sizes from `SDPG_NB_*` environment variables, which the kernel inherits: the
  tests shrink them, and point every run directory and results file into `tmp_path`, so nothing is
  written into the repository. The embedded model comes from the shared cache; a fixture warm-starts it
  first when it is missing (minutes, once per machine), so no notebook cell has to wait for it.
- Notebook 03 runs three times: on a `docs/compare.json` written by the comparison experiment's own
  writer (so a format change breaks this test, not a reader), on run directories only, and on nothing.
  Its race (GRPO against SDPG, paused, resumed and stopped) runs in the first, a few steps long; the other two
  set its steps to 0, as the race does not depend on where the comparison came from.
- Outputs are stripped in git: a committed notebook with outputs, execution counts or widget state fails.
"""
import argparse
import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from fixtures.records import emit_step, write_run
from sdpg.config import TrainConfig
from sdpg.models import load_model_and_tokenizer
from sdpg.records import RecordStream

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("01_loss_terms.ipynb", "02_live_training.ipynb", "03_compare_methods.ipynb", "04_privileged_context.ipynb")
CELL_TIMEOUT = 600
"""seconds per cell (the embedded model is in the cache before any notebook starts)"""


def execute(name: str) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel from the notebooks folder; raises on the first failing cell."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, list[dict]]:
    """All stream text of the executed notebook, and every rich output's data bundle."""
    text, bundles = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out["output_type"] == "stream":
                text.append(out["text"])
            elif "data" in out:
                bundles.append(out["data"])
    return "".join(text), bundles


def plotly_figures(bundles: list[dict]) -> list[dict]:
    return [b["application/vnd.plotly.v1+json"] for b in bundles if "application/vnd.plotly.v1+json" in b]


@pytest.fixture(scope="module")
def embedded_model():
    """The default config's embedded model in the shared cache, warm-started here if it is missing."""
    cfg = TrainConfig()
    load_model_and_tokenizer(cfg.model, data_cfg=cfg.data, progress=False)


@pytest.fixture
def nb_env(monkeypatch, tmp_path):
    """Small notebook settings; nothing of the repository's runs/ or docs/ is read or written."""
    settings = {
        "SDPG_NB_PROMPTS": "4", "SDPG_NB_GROUP": "4", "SDPG_NB_VAL": "8",
        "SDPG_NB_RUNS": str(tmp_path / "runs"), "SDPG_NB_RUNS_ROOT": str(tmp_path / "runs"),
        "SDPG_NB_COMPARE": str(tmp_path / "docs" / "compare.json"), "SDPG_NB_RACE_STEPS": "0",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    return tmp_path


def test_loss_terms_notebook_runs(embedded_model, nb_env, monkeypatch):
    monkeypatch.setenv("SDPG_NB_STEPS", "1")
    text, bundles = outputs(execute("01_loss_terms.ipynb"))
    assert "max |autograd KL gradient - policy gradient with A_dist|" in text
    assert len(plotly_figures(bundles)) >= 10


def test_live_training_notebook_runs_pauses_stops_and_replays(embedded_model, nb_env, monkeypatch):
    # The run must outlast the clicks: a warm-started step takes about a second, and the notebook stops
    # the run at STOP_AT, so the extra planned steps cost nothing.
    monkeypatch.setenv("SDPG_NB_STEPS", "40")
    monkeypatch.setenv("SDPG_NB_STOP_AT", "4")
    monkeypatch.setenv("SDPG_NB_PROMPTS", "2")
    text, _ = outputs(execute("02_live_training.ipynb"))
    assert "all checks passed" in text
    (run_dir,) = (nb_env / "runs").iterdir()
    assert RecordStream.open(run_dir).metrics()


def _write_compare_results(tmp_path: Path) -> Path:
    """Two variants x two seeds of fixture records, summarised by the comparison experiment's own writer."""
    from experiments.compare import plan_runs, write_results

    plans = plan_runs(TrainConfig(), ["sdpg", "grpo"], [0, 1], 4, tmp_path / "runs" / "compare")
    for i, plan in enumerate(plans):
        stream = RecordStream(plan.run_dir)
        stream.write_config(plan.cfg.to_dict())
        for step in range(1, 5):
            emit_step(stream, step, seed=i)
    args = argparse.Namespace(results=tmp_path / "docs" / "results.md", json=None, figures=None, png=False, steps=4)
    write_results(plans, {(p.variant, p.seed): None for p in plans}, TrainConfig(), args, ["--steps", "4"])
    return args.results.with_name("compare.json")


def test_compare_notebook_plots_comparison_results_and_races_grpo_against_sdpg(embedded_model, nb_env, monkeypatch):
    # The race must outlast the clicks (pause after step 1, stop at step 3); the planned steps after the stop cost nothing.
    monkeypatch.setenv("SDPG_NB_RACE_STEPS", "40")
    monkeypatch.setenv("SDPG_NB_RACE_STOP_AT", "3")
    monkeypatch.setenv("SDPG_NB_PROMPTS", "2")
    assert _write_compare_results(nb_env) == Path(os.environ["SDPG_NB_COMPARE"])
    text, bundles = outputs(execute("03_compare_methods.ipynb"))
    assert "Comparison results from" in text and "falls back" not in text
    figures = plotly_figures(bundles)
    assert len(figures) == 6, "three comparison figures, then the race's curves and its two heatmaps"
    names = {trace.get("name") for fig in figures[:3] for trace in fig["data"]}
    assert {"sdpg", "grpo"} <= names

    assert "race checks passed" in text
    (race_dir,) = (nb_env / "runs").glob("race-grpo-sdpg-*")
    assert {t.get("name") for t in figures[3]["data"]} == {"grpo", "sdpg"}
    heatmaps = figures[4:]
    assert [f["layout"]["title"]["text"].split(" — ")[0] for f in heatmaps] == ["GRPO", "SDPG"]
    assert all(f["data"][0]["type"] == "heatmap" and f["data"][0]["z"] for f in heatmaps)
    for method in ("grpo", "sdpg"):
        stream = RecordStream.open(race_dir / method)
        assert stream.config()["loss"]["method"] == method
        events = [e["event"] for e in stream.events()]
        assert events.count("pause") == 1 and events.count("resume") == 1 and events[-1] == "stopped", events
        assert 3 <= max(m["step"] for m in stream.metrics()) < 40
    widgets = [b for b in bundles if "application/vnd.jupyter.widget-view+json" in b]
    assert widgets, "the race's live view is a widget"


def test_compare_notebook_falls_back_to_run_directories(nb_env):
    write_run(nb_env / "runs" / "sdpg-a", steps=4)
    write_run(nb_env / "runs" / "sdpg-b", steps=4, crash_at=3)
    text, bundles = outputs(execute("03_compare_methods.ipynb"))
    assert "falls back to the 2 run directories" in text
    names = {trace.get("name") for fig in plotly_figures(bundles) for trace in fig["data"]}
    assert {"sdpg-a", "sdpg-b"} <= names
    assert any("crashed" in b.get("text/html", "") for b in bundles)  # the summary table shows the crash


def test_compare_notebook_says_so_when_there_is_nothing(nb_env):
    text, bundles = outputs(execute("03_compare_methods.ipynb"))
    assert "nothing to plot yet" in text
    assert not plotly_figures(bundles)


def test_privileged_context_notebook_probes_every_context_and_ranks_them(embedded_model, nb_env, monkeypatch):
    monkeypatch.setenv("SDPG_NB_GAP_PROBLEMS", "6")
    monkeypatch.setenv("SDPG_NB_GAP_SAMPLES", "2")
    text, bundles = outputs(execute("04_privileged_context.ipynb"))
    assert "KL = 0 exactly" in text
    heatmaps = [f for f in plotly_figures(bundles) if f["data"] and f["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 3 and all(len(f["data"][0]["z"]) == 7 for f in heatmaps)  # six contexts and free text
    ranked = [line.split(" gap ")[0].strip() for line in text.splitlines() if " gap " in line and "mean KL" in line]
    assert len(ranked) == 6 and "own prompt (sanity)" in ranked
    gaps = [float(line.split(" gap ")[1].split()[0]) for line in text.splitlines() if " gap " in line and "mean KL" in line]
    assert gaps == sorted(gaps, reverse=True)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_are_clean(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and any(c.cell_type == "markdown" for c in nb.cells)
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: code cell {i} has outputs; strip them"
        assert "execution" not in cell.metadata, f"{name}: code cell {i} carries execution timings; strip them"
    assert "widgets" not in nb.metadata, f"{name}: saved widget state; clear it before committing"


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_use_only_the_public_api(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    private = re.findall(r"\._[A-Za-z]\w*|import\s+\([^)]*?\b_[A-Za-z]\w*|import\s+[^(\n]*?\b_[A-Za-z]\w*", source)
    assert not private, f"{name} reaches into private engine or lab names: {private}"


def test_every_notebook_is_tested():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted(NAMES)
