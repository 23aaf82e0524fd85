"""Method comparison: every registered method and the SDPG ablations, same budget, several seeds.

    python -m experiments.compare [--task add] [--context full] [--methods ...] [--betas ...]
                                  [--seeds 0 1 2 3 4] [--steps 100] [--jobs 2] [config flags]

Design choices:
- A variant is a method name plus config settings. Every registered method is a variant (GRPO with
  alpha = 0, i.e. the outcome term only; `grpo-anchor` is GRPO with the shared alpha anchor, as the paper runs
  its baselines); the SDPG ablations are settings on `sdpg` (`sdpg-alpha0`, `sdpg-beta0`, `sdpg-nogate`), never
  code copies; `-lr<rate>` after any variant sets its learning rate (`experiments.tune`). All variants share one base config
  (the `cpu` preset plus any `sdpg.train` flags given here), the step budget and the seeds.
- `--betas` adds a beta sweep of every distilling variant (`sdpg-b0.2` = `sdpg` with loss.beta 0.2).
- `--task` / `--context` pick the embedded task and the teacher's context variant for every run; the
  rollout length grows to the task's when it could not hold its answers, unless
  `--rollout.max_new_tokens` is given (then a too-short one is refused).
- Each run is a normal run directory `<out>/<variant>-s<seed>`, trained by `python -m sdpg.train` in a
  process of its own with one torch thread, `--jobs` of them at a time: runs never share a core's
  threads, so their timings stay comparable. Rerunning the command skips finished runs, resumes
  interrupted ones from their last checkpoint (a run without one starts over) and refuses a directory
  made with different settings.
- A crashed run is reported in the table and the command goes on with the others (exit status 1).
- Statistics (`experiments.stats`): mean and 95 % bootstrap interval over seeds of final and best
  held-out pass@1 and of the area under the pass@1 curve, and each variant's paired (same seed)
  difference to `grpo` when it is in the comparison.
- Results: `docs/results.md` gets (or has replaced) one section, "Method comparison" (with the task's
  name for tasks other than `add`), with the table,
  the exact command and the git commit; `docs/compare.json` holds the per-step curves and held-out
  evaluations of every run as flat rows (one `polars.DataFrame(rows)` away) for the notebooks.
- Figures are the `lab.compare` views saved as plotly HTML under `docs/figures/` (plotly.js written once
  beside them, viewable offline), plus PNG when `kaleido` is installed (it drives the system Chromium);
  without it the page says so. This command lives outside `sdpg/`, so the engine never loads plotly.

Shapes: none (this module handles records, not tensors).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from experiments.stats import bootstrap_ci, curve_area, paired_difference
from lab.compare import comparison_figures
from sdpg.checkpoint import latest_checkpoint
from sdpg.cli import build_parser as train_parser, config_from_args
from sdpg.config import TrainConfig
from sdpg.methods import METHODS, check_config
from sdpg.records import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, ROLLOUTS_FILE, RecordStream, json_safe
from sdpg.runs import TAIL_FRACTION, run_summary as summarise_run
from sdpg.tasks import CONTEXTS, TASKS, get_task

SECTION = "Method comparison"
METHOD_SETTINGS: dict[str, dict[str, Any]] = {"grpo": {"loss.alpha": 0.0}}
"""settings that make a registered method the baseline it is named after (GRPO: the outcome term only)"""
ABLATIONS: dict[str, dict[str, Any]] = {
    "grpo-anchor": {"loss.method": "grpo"},
    "sdpg-alpha0": {"loss.method": "sdpg", "loss.alpha": 0.0},
    "sdpg-beta0": {"loss.method": "sdpg", "loss.beta": 0.0},
    "sdpg-nogate": {"loss.method": "sdpg", "loss.gate": False},
}
BASELINE = "grpo"
"""the variant every other one is compared with, seed by seed"""
CONTROLLED = {"loss.method": "--methods", "run.seed": "--seeds", "run.run_dir": "--out", "run.steps": "--steps",
              "data.task": "--task", "data.context": "--context"}
"""config fields the experiment sets itself, with the flag that does it"""
CURVE_KEYS = ("reward/mean", "reward/accuracy", "entropy/mean", "kl/distill_mean", "response/length_mean",
              "loss/total", "loss/pg", "loss/distill", "loss/ref_kl", "gate/fraction", "grad/norm", "time/step")
EVAL_KEYS = ("eval/pass@1", "eval/teacher_pass@1", "eval/response_length")
PLAN_FILE = "plan.json"
"""the config a run is started from (`sdpg.train --config`)"""
LOG_FILE = "train.log"
"""the run process's output"""
CPU_FILE = "cpu.json"
"""CPU seconds the run's processes used, summed over sittings"""
RUN_FILES = (METRICS_FILE, ROLLOUTS_FILE, EVENTS_FILE, CONFIG_FILE, PLAN_FILE, LOG_FILE, CPU_FILE)
"""the files a run directory holds besides checkpoints/"""
CI_KEYS = ("final_pass@1", "best_pass@1", "auc_pass@1")
"""summary keys reported with a bootstrap interval and a paired difference to the baseline"""

# Measured on the 2-core development machine with the embedded model's shape (4 layers x 128) and the default
# rollout settings (16 prompts x 8 samples x up to 24 tokens; 256 held-out prompts x 4 samples, student and
# teacher): CPU seconds of a single-threaded process, i.e. wall time on an idle core. A randomly initialised
# model writes near-full-length answers, so these are upper bounds for the warm-started one; other jobs on
# the machine stretch wall time by their share of the cores.
SECONDS_PER_STEP = 1.5
"""one training step (rollout, teacher and student forwards, update); 1.3-1.6 s measured for sdpg and grpo"""
SECONDS_PER_EVAL = 7.0
"""one held-out evaluation (student and teacher pass@1); 6.4-6.8 s measured"""
SECONDS_PER_RUN = 3.0
"""loading the model and data for one run"""


def variants() -> dict[str, dict[str, Any]]:
    """Variant name -> config settings ("section.field" -> value): every registered method, then the ablations."""
    out = {name: {"loss.method": name} | METHOD_SETTINGS.get(name, {}) for name in METHODS}
    return out | ABLATIONS


def lr_variant(name: str, lr: float) -> str:
    """The variant `name` at learning rate `lr`: `<name>-lr<lr>` (e.g. `sdpg-lr3e-05`)."""
    return f"{name}-lr{lr:g}"


def variant_settings(name: str) -> dict[str, Any]:
    """The settings of a variant: a name of `variants()`, or one of them plus `-b<beta>` (a distilling one), either
    of them plus `-lr<rate>` (its learning rate)."""
    base, sep, lr = name.rpartition("-lr")
    if sep and base:
        try:
            rate = float(lr)
        except ValueError:
            rate = None
        if rate is not None and rate > 0:
            return variant_settings(base) | {"optim.lr": rate}
    table = variants()
    if name in table:
        return table[name]
    base, sep, beta = name.rpartition("-b")
    if sep and base in table and _distills(table[base]):
        try:
            return table[base] | {"loss.beta": float(beta)}
        except ValueError:
            pass
    raise ValueError(f"unknown variant {name!r}; known: {sorted(table)}, or a distilling one plus -b<beta> "
                     "(e.g. sdpg-b0.2)")


def check_variants(names: list[str]) -> None:
    """Raise ValueError listing every name that is not a variant."""
    unknown = []
    for name in names:
        try:
            variant_settings(name)
        except ValueError:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(variants())}, or a distilling one plus "
                         "-b<beta> (e.g. sdpg-b0.2)")


def with_beta_sweep(names: list[str], betas: list[float]) -> list[str]:
    """`names` with, after each distilling variant that does not fix beta itself, one variant per beta."""
    check_variants(names)
    out = []
    for name in names:
        out.append(name)
        settings = variant_settings(name)
        if _distills(settings) and "loss.beta" not in settings:
            out += [f"{name}-b{beta:g}" for beta in betas]
    return list(dict.fromkeys(out))


def _distills(settings: dict[str, Any]) -> bool:
    return METHODS[settings["loss.method"]].distills


def estimate_seconds(n_runs: int, steps: int, eval_every: int) -> float:
    """runs x (steps x t_step + evaluations x t_eval + t_load); evaluations at step 0, every eval_every, and the end."""
    n_evals = 2 + (steps - 1) // eval_every if eval_every else 2
    return n_runs * (steps * SECONDS_PER_STEP + n_evals * SECONDS_PER_EVAL + SECONDS_PER_RUN)


# ----------------------------------------------------------------------------- planning

@dataclass
class RunPlan:
    variant: str
    seed: int
    cfg: TrainConfig
    run_dir: Path


def apply_settings(cfg: TrainConfig, settings: dict[str, Any]) -> TrainConfig:
    for key, value in settings.items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return cfg


def plan_runs(base: TrainConfig, names: list[str], seeds: list[int], steps: int, out: Path) -> list[RunPlan]:
    """One validated config per (variant, seed), all from `base` with the same step budget."""
    check_variants(names)
    plans = []
    for name in names:
        for seed in seeds:
            cfg = TrainConfig.from_dict(base.to_dict())
            run_dir = out / f"{name}-s{seed}"
            apply_settings(cfg, variant_settings(name) | {"run.seed": seed, "run.steps": steps,
                                                          "run.run_dir": str(run_dir)})
            plans.append(RunPlan(name, seed, check_config(cfg), run_dir))
    return plans


def run_state(plan: RunPlan) -> str:
    """"new", "finished", "resume" (from its checkpoint) or "restart" (records but no checkpoint)."""
    saved_file = plan.run_dir / CONFIG_FILE
    if not saved_file.exists():
        return "restart" if any((plan.run_dir / f).exists() for f in RUN_FILES) else "new"
    saved = TrainConfig.from_dict(json.loads(saved_file.read_text()))
    diffs = _differences(saved.to_dict(), plan.cfg.to_dict()) - {"run.steps", "run.run_dir"}
    if diffs:
        raise ValueError(f"{plan.run_dir} was made with different settings ({', '.join(sorted(diffs))}); "
                         "use another --out or delete that directory")
    if saved.run.steps > plan.cfg.run.steps:
        raise ValueError(f"{plan.run_dir} ran for {saved.run.steps} steps, more than --steps {plan.cfg.run.steps}")
    events = RecordStream.open(plan.run_dir).events()
    lifecycle = [e for e in events if e["event"] in ("finished", "stopped", "error")]
    if lifecycle and lifecycle[-1]["event"] == "finished" and lifecycle[-1].get("step") == plan.cfg.run.steps:
        return "finished"
    return "resume" if latest_checkpoint(plan.run_dir) is not None else "restart"


def _differences(a: dict, b: dict, prefix: str = "") -> set[str]:
    out = set()
    for key in a.keys() | b.keys():
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.add(f"{prefix}{key}")
    return out


# ----------------------------------------------------------------------------- running

def run_all(plans: list[RunPlan], jobs: int = 1, threads: int = 1) -> dict[tuple[str, int], str | None]:
    """Run, resume or skip every plan, `jobs` processes at a time; (variant, seed) -> error (None if it finished)."""
    from tqdm import tqdm

    states = {(p.variant, p.seed): run_state(p) for p in plans}
    done = {(p.variant, p.seed): _steps_done(p, states[(p.variant, p.seed)]) for p in plans}
    errors: dict[tuple[str, int], str | None] = {key: None for key, state in states.items() if state == "finished"}
    pending = [p for p in plans if states[(p.variant, p.seed)] != "finished"]
    running: dict[tuple[str, int], tuple[RunPlan, subprocess.Popen]] = {}
    bar = tqdm(total=sum(p.cfg.run.steps for p in plans), initial=sum(done.values()), unit="step",
               desc="compare", dynamic_ncols=True)
    try:
        while pending or running:
            while pending and len(running) < jobs:
                plan = pending.pop(0)
                running[(plan.variant, plan.seed)] = (plan, _launch(plan, states[(plan.variant, plan.seed)], threads))
            time.sleep(_POLL_S)
            for key, (plan, proc) in list(running.items()):
                done[key] = _steps_recorded(plan)
                if _reap(plan, proc):
                    errors[key] = _outcome(plan, proc.returncode)
                    del running[key]
            bar.n = sum(done.values())
            bar.set_description(" ".join(f"{v}-s{s}" for v, s in running) or "compare")
            bar.refresh()
    except KeyboardInterrupt:
        _stop_all(list(running.values()))
        raise
    finally:
        bar.close()
    return errors


_POLL_S = 1.0
"""seconds between looks at the running processes"""


def _launch(plan: RunPlan, state: str, threads: int) -> subprocess.Popen:
    """`python -m sdpg.train` for one plan in its own process (`threads` torch threads), output to a log file."""
    if state == "restart":
        _clear_run(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if state == "resume":
        args = ["--resume", str(plan.run_dir), "--run.steps", str(plan.cfg.run.steps)]
    else:
        plan_file = plan.run_dir / PLAN_FILE
        plan_file.write_text(json.dumps(plan.cfg.to_dict(), indent=1))
        args = ["--config", str(plan_file)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                        "TOKENIZERS_PARALLELISM": "false"}
    log = open(plan.run_dir / LOG_FILE, "a")
    # Own session: a Ctrl-C in the terminal reaches only this command, which stops each run cleanly.
    proc = subprocess.Popen([sys.executable, "-m", "sdpg.train", "--quiet", *args], stdout=log,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    log.close()
    return proc


def _reap(plan: RunPlan, proc: subprocess.Popen) -> bool:
    """Whether the run's process has ended; if so, add its CPU time (its own and its workers') to the run's tally."""
    pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
    if pid == 0:
        return False
    proc.returncode = os.waitstatus_to_exitcode(status)
    tally = plan.run_dir / CPU_FILE
    before = json.loads(tally.read_text())["cpu_s"] if tally.exists() else 0.0
    tally.write_text(json.dumps({"cpu_s": round(before + usage.ru_utime + usage.ru_stime, 1)}))
    return True


def run_cpu_seconds(run_dir: Path) -> float | None:
    """CPU seconds the run's processes used over all sittings (None when this command did not run it)."""
    tally = run_dir / CPU_FILE
    return json.loads(tally.read_text())["cpu_s"] if tally.exists() else None


def _outcome(plan: RunPlan, returncode: int) -> str | None:
    """None when the run finished its steps, else why not (its error event, else its log's last line)."""
    if returncode == 0 and run_state(plan) == "finished":
        return None
    events = RecordStream.open(plan.run_dir).events() if (plan.run_dir / EVENTS_FILE).exists() else []
    error = next((e["message"] for e in reversed(events) if e["event"] == "error"), None)
    if error:
        return error
    lines = (plan.run_dir / LOG_FILE).read_text().strip().splitlines() if (plan.run_dir / LOG_FILE).exists() else []
    return f"exit status {returncode}" + (f": {lines[-1]}" if lines else "")


def _stop_all(running: list[tuple[RunPlan, subprocess.Popen]]) -> None:
    """Ask each run to stop (SIGINT: it saves a checkpoint), then wait for all of them, tallying their CPU time."""
    for _, proc in running:
        proc.send_signal(signal.SIGINT)
    for plan, proc in running:
        while not _reap(plan, proc):
            time.sleep(0.2)


def _steps_recorded(plan: RunPlan) -> int:
    """The last training step in a run's metrics (0 before the first)."""
    if not (plan.run_dir / METRICS_FILE).exists():
        return 0
    return max((m["step"] for m in RecordStream.open(plan.run_dir).metrics() if "reward/mean" in m), default=0)


def _clear_run(run_dir: Path) -> None:
    """Remove what a run wrote (records, config, checkpoints) and nothing else, so it can start over."""
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _steps_done(plan: RunPlan, state: str) -> int:
    """Steps a run already has: all of them when finished, its checkpoint's step when it will resume."""
    if state == "finished":
        return plan.cfg.run.steps
    if state == "resume":
        return int(latest_checkpoint(plan.run_dir).name.split("_")[-1])
    return 0


# ----------------------------------------------------------------------------- summarising

def run_summary(metrics: list[dict], steps: int) -> dict[str, float]:
    """The run's own summary (`sdpg.runs.run_summary`) plus `auc_pass@1`, the area under its held-out pass@1 curve:
    the mean height of the curve from step 0 to the last step, NaN unless the run reached it."""
    evals = [m for m in metrics if "eval/pass@1" in m]
    finished = any(m["step"] == steps for m in evals)
    auc = curve_area([m["step"] for m in evals], [m["eval/pass@1"] for m in evals]) if finished else math.nan
    return {**summarise_run(metrics, steps), "auc_pass@1": auc}


def seed_stats(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation over seeds, ignoring NaN; std is NaN for fewer than two values."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return {"mean": statistics.fmean(finite) if finite else math.nan,
            "std": statistics.stdev(finite) if len(finite) > 1 else math.nan, "n": len(finite)}


def collect(plans: list[RunPlan], errors: dict[tuple[str, int], str | None]) -> dict:
    """Everything the page, the figures and the notebooks need, as JSON-able data."""
    runs, curves, evals = [], [], []
    for plan in plans:
        metrics = RecordStream.open(plan.run_dir).metrics() if plan.run_dir.exists() else []
        error = errors.get((plan.variant, plan.seed))
        runs.append({"variant": plan.variant, "seed": plan.seed, "run_dir": str(plan.run_dir),
                     "status": "crashed" if error else "finished", "error": error,
                     "summary": run_summary(metrics, plan.cfg.run.steps), "cpu_s": run_cpu_seconds(plan.run_dir)})
        tag = {"variant": plan.variant, "seed": plan.seed}
        curves += [tag | {"step": m["step"]} | {k: m.get(k) for k in CURVE_KEYS} for m in metrics if "reward/mean" in m]
        evals += [tag | {"step": m["step"]} | {k: m.get(k) for k in EVAL_KEYS} for m in metrics if "eval/pass@1" in m]
    names = list(dict.fromkeys(p.variant for p in plans))
    summary = {name: variant_summary([r for r in runs if r["variant"] == name],
                                     [r for r in runs if r["variant"] == BASELINE]) for name in names}
    settings = {n: variant_settings(n) for n in names}
    return {"variants": {n: {"settings": settings[n], "description": METHODS[settings[n]["loss.method"]].description}
                         for n in names},
            "summary": summary, "runs": runs, "curves": curves, "evals": evals}


def variant_summary(mine: list[dict], baseline: list[dict]) -> dict:
    """Per summary key: mean, std and bootstrap interval over the finished seeds; for the interval keys also
    the paired difference to the baseline's runs of the same seeds (`vs_grpo`, absent without a baseline)."""
    finished = [r for r in mine if r["status"] == "finished"]
    out = {}
    for key in mine[0]["summary"]:
        values = [r["summary"][key] for r in finished]
        out[key] = seed_stats(values)
        if key in CI_KEYS:
            ci = bootstrap_ci(values)
            out[key] |= {"lo": ci["lo"], "hi": ci["hi"]}
    base = {r["seed"]: r["summary"] for r in baseline if r["status"] == "finished"}
    if base:
        out["vs_grpo"] = {key: paired_difference({r["seed"]: r["summary"][key] for r in finished},
                                                 {s: v[key] for s, v in base.items()}) for key in CI_KEYS}
    out["runs"] = {"finished": len(finished), "total": len(mine)}
    return out


# ----------------------------------------------------------------------------- writing

def write_figures(data: dict, fig_dir: Path, *, png: bool) -> tuple[list[Path], list[Path], str]:
    """The comparison figures (`lab.compare`): HTML always, PNG if kaleido works.

    Returns the HTML paths, the PNG paths, and a note on PNG ("" when they were written).
    """
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = comparison_figures(data)
    html = []
    for stem, fig in figures.items():
        html.append(fig_dir / f"{stem}.html")
        fig.write_html(html[-1], include_plotlyjs="directory")
    return html, *_write_pngs(figures, fig_dir, png)


def _write_pngs(figures: dict, fig_dir: Path, png: bool) -> tuple[list[Path], str]:
    if not png:
        return [], "PNG figures were not requested (--no-png)."
    try:
        import kaleido  # noqa: F401  (plotly's image export backend)
    except ImportError:
        return [], "PNG figures were skipped: `kaleido` is not installed (`pip install kaleido`; it uses the system Chromium)."
    paths = []
    try:
        for stem, fig in figures.items():
            paths.append(fig_dir / f"{stem}.png")
            fig.write_image(paths[-1], width=1200, height=fig.layout.height or 500)
    except Exception as exc:  # a missing or broken browser must not lose the results page
        return [], f"PNG figures were skipped: image export failed ({type(exc).__name__}: {exc})."
    return paths, ""


def _fmt(stat: dict, digits: int) -> str:
    if math.isnan(stat["mean"]):
        return "–"
    if math.isnan(stat["std"]):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _fmt_ci(stat: dict | None, digits: int = 3, sign: bool = False) -> str:
    """"mean [lo, hi]" (the interval only from two values on); "–" when there is nothing to show."""
    if stat is None or math.isnan(stat["mean"]):
        return "–"
    f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    if stat["n"] < 2:
        return f.format(stat["mean"])
    return f"{f.format(stat['mean'])} [{f.format(stat['lo'])}, {f.format(stat['hi'])}]"


def section_title(task: str, context: str = "full") -> str:
    """The results page heading of a comparison: "Method comparison", plus the task and context if not the default."""
    if (task, context) == ("add", "full"):
        return SECTION
    return f"{SECTION}: {task} task" + ("" if context == "full" else f", {context} context")


def results_section(data: dict, meta: dict, links: dict[str, Any]) -> str:
    """The markdown of the "Method comparison" section.

    `links` holds paths relative to the page: "html" and "png" (lists), "json", and "png_note" (text or "").
    """
    head = ("| variant | settings | runs | final pass@1 | best pass@1 | pass@1 AUC | Δ final vs grpo | Δ AUC vs grpo | "
            "entropy | response length | KL(student‖teacher) | teacher pass@1 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, info in data["variants"].items():
        s = data["summary"][name]
        vs = s.get("vs_grpo", {}) if name != BASELINE else {}
        settings = ", ".join(f"{k.split('.')[1]}={v}" for k, v in info["settings"].items() if k != "loss.method")
        rows.append(f"| `{name}` | {settings or 'defaults'} | {s['runs']['finished']}/{s['runs']['total']} | "
                    f"{_fmt_ci(s['final_pass@1'])} | {_fmt_ci(s['best_pass@1'])} | {_fmt_ci(s['auc_pass@1'])} | "
                    f"{_fmt_ci(vs.get('final_pass@1'), sign=True)} | {_fmt_ci(vs.get('auc_pass@1'), sign=True)} | "
                    f"{_fmt(s['entropy'], 3)} | {_fmt(s['response_length'], 1)} | {_fmt(s['distill_kl'], 4)} | "
                    f"{_fmt(s['teacher_pass@1'], 3)} |")
    crashed = [r for r in data["runs"] if r["status"] == "crashed"]
    lines = [f"## {section_title(meta.get('task', 'add'), meta.get('context', 'full'))}", "",
             f"Embedded task `{meta.get('task', 'add')}` (teacher context `{meta.get('context', 'full')}`), "
             f"{meta['steps']} training steps per run, seeds {meta['seeds']}. Pass@1 is on the held-out problems "
             "(final: at the last step; best: the highest evaluation after step 0; AUC: the mean height of the "
             "pass@1 curve over training), as the mean over the seeds whose run finished with its 95 % bootstrap "
             f"interval in brackets; Δ vs {BASELINE} is the mean paired (same seed) difference to `{BASELINE}` with "
             "its interval. Teacher pass@1 is the same model shown the privileged context, at the last step. "
             "Entropy, response length (tokens) and the full-vocabulary KL to the live teacher are mean ± std over "
             f"seeds of the means over the last {TAIL_FRACTION:.0%} of training steps. "
             f"Shared settings: {meta['base']}.", "",
             head + "\n".join(rows), "",
             f"CPU time of the runs (all sittings of this command): {meta.get('cpu_s', 0) / 60:.1f} min.", ""]
    if crashed:
        lines += ["Crashed runs (left out of the means): "
                  + "; ".join(f"`{r['variant']}` seed {r['seed']}: {(r['error'] or '').splitlines()[0]}" for r in crashed), ""]
    lines += ["Figures (interactive HTML): " + ", ".join(f"[{Path(p).stem}]({p})" for p in links["html"]) + "."]
    lines += [f"![{Path(p).stem}]({p})" for p in links["png"]]
    if links["png_note"]:
        lines += ["", links["png_note"]]
    lines += ["", f"Per-step curves and evaluations of every run: [{Path(links['json']).name}]({links['json']}).",
              "", "Produced by:", "", f"    {meta['command']}", "",
              f"at commit `{meta['commit']}`{' (working tree with uncommitted changes)' if meta['dirty'] else ''}, "
              f"{meta['created']}.", ""]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """`text` with the section whose heading opens `section` (up to the next "## " heading) replaced, or
    `section` appended when there is none."""
    heading = section.splitlines()[0].strip()
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == heading), None)
    if start is None:
        sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
        return text + sep + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def git_commit(outputs: tuple[Path, ...] = ()) -> tuple[str, bool]:
    """HEAD's commit and whether the working tree differs from it ("unknown" outside a git checkout).

    Changes to `outputs` (the page and files this command writes) do not count: rewriting a committed
    results page must not mark the code that produced it as modified.
    """
    # Outputs outside the working directory cannot be changes to it (and git refuses such pathspecs).
    inside = [Path(os.path.relpath(p.resolve())) for p in outputs]
    excludes = [f":(exclude){p.as_posix()}" for p in inside if not p.as_posix().startswith("../")]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *excludes],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown", False
    return head, bool(dirty)


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    names = list(variants())
    epilog = (
        "variants: " + ", ".join(names) + ".\n\n"
        "Any other flag is a training config flag of `python -m sdpg.train` (e.g. --loss.beta 0.1, --preset paper);\n"
        "it applies to every variant.\n\n"
        "Expected CPU time on idle cores (measured upper bounds for the embedded add task; --jobs divides the\n"
        "wall time when there are that many idle cores):\n"
        f"  runs x (steps x {SECONDS_PER_STEP} s + evaluations x {SECONDS_PER_EVAL} s + {SECONDS_PER_RUN} s),\n"
        "  evaluations = 2 + (steps - 1) // run.eval_every. With the defaults "
        f"({len(names)} variants x 5 seeds x 100 steps, eval every 25):\n"
        f"  about {estimate_seconds(len(names) * 5, 100, 25) / 3600:.1f} h; 5 variants x 5 seeds x 100 steps: "
        f"about {estimate_seconds(25, 100, 25) / 3600:.1f} h.")
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n\n")[0],
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--methods", nargs="+", default=names, metavar="VARIANT",
                        help="variants to run (default: all); a distilling one plus -b<beta> sets its beta")
    parser.add_argument("--betas", nargs="+", type=float, default=[], metavar="BETA",
                        help="beta sweep: add <variant>-b<beta> after each distilling variant (default: none)")
    parser.add_argument("--task", choices=sorted(TASKS), default="add", help="embedded task (default: add)")
    parser.add_argument("--context", choices=sorted(CONTEXTS), default="full",
                        help="privileged context variant the teacher sees (default: full)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4],
                        help="seeds per variant (default: 0 1 2 3 4)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default: 100)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one process each (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    parser.add_argument("--out", type=Path, default=None,
                        help="run directories go under here (default: runs/compare, plus -<task>[-<context>] "
                             "for another task or context)")
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"), help="markdown page to update")
    parser.add_argument("--json", type=Path, default=None,
                        help="curves file (default: compare[-<task>[-<context>]].json beside --results)")
    parser.add_argument("--figures", type=Path, default=None,
                        help="figure folder (default: figures/[<task>[-<context>]/] beside --results)")
    parser.add_argument("--model", default=None, help="model name or directory for every run (default: the config's)")
    parser.add_argument("--no-png", dest="png", action="store_false", help="write HTML figures only")
    return parser


def base_config(rest: list[str], parser: argparse.ArgumentParser, task: str = "add", context: str = "full"
                ) -> TrainConfig:
    """The shared config: `sdpg.train`'s preset / --config / flags, on `task` with `context`; fields the
    experiment controls are refused. A rollout length too short for the task's answers grows to the task's,
    unless given as a flag."""
    train_args = train_parser().parse_args(rest)
    if train_args.resume:
        parser.error("--resume is not an experiment flag: rerunning the same command resumes every run")
    for key, flag in CONTROLLED.items():
        if key in vars(train_args):
            parser.error(f"--{key} is set per run by the experiment; use {flag}")
    cfg = config_from_args(train_args)
    cfg.data.task, cfg.data.context = task, context
    needs = get_task(task, cfg.data.digits)
    if "rollout.max_new_tokens" not in vars(train_args) and cfg.rollout.max_new_tokens < needs.response_tokens:
        cfg.rollout.max_new_tokens = needs.max_new_tokens
    return cfg


def default_paths(args: argparse.Namespace) -> tuple[Path, Path, Path]:
    """Run folder, curves file and figure folder: the add task's names, with -<task>[-<context>] otherwise
    (a namespace without task or context, as a caller may build, means the add task's)."""
    task, context = getattr(args, "task", "add"), getattr(args, "context", "full")
    tag = "" if (task, context) == ("add", "full") else f"-{task}" + ("" if context == "full" else f"-{context}")
    out = getattr(args, "out", None) or Path(f"runs/compare{tag}")
    json_path = args.json or args.results.with_name(f"compare{tag}.json")
    fig_dir = args.figures or args.results.parent / "figures" / tag.lstrip("-")
    return out, json_path, fig_dir


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    base = base_config(rest, parser, args.task, args.context)
    if args.model:
        base.model.name = args.model
    out, _, _ = default_paths(args)
    try:
        names = with_beta_sweep(list(dict.fromkeys(args.methods)), args.betas)
        plans = plan_runs(base, names, list(dict.fromkeys(args.seeds)), args.steps, out)
        for plan in plans:
            run_state(plan)  # refuse a mismatched directory before anything runs
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    eta = estimate_seconds(len(plans), args.steps, base.run.eval_every)
    print(f"{len(plans)} runs x {args.steps} steps on task {args.task} ({args.context} context), {args.jobs} at a "
          f"time; at most about {eta / 60:.0f} CPU-min for the add task on idle cores", file=sys.stderr)
    try:
        errors = run_all(plans, jobs=args.jobs, threads=args.threads)
    except KeyboardInterrupt:
        print("\nstopped; rerun the same command to resume", file=sys.stderr)
        return 130
    write_results(plans, errors, base, args, argv)
    return 1 if any(errors.values()) else 0


def write_results(plans: list[RunPlan], errors: dict, base: TrainConfig, args: argparse.Namespace,
                  argv: list[str]) -> None:
    """docs/compare.json, the figures, and the "Method comparison" section of the results page."""
    data = collect(plans, errors)
    results = args.results
    _, json_path, fig_dir = default_paths(args)
    commit, dirty = git_commit((results, json_path, fig_dir))
    meta = {"command": "python -m experiments.compare " + shlex.join(argv), "commit": commit, "dirty": dirty,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "steps": args.steps,
            "seeds": sorted({p.seed for p in plans}), "base": shared_settings(base), "task": base.data.task,
            "context": base.data.context, "cpu_s": sum(r["cpu_s"] for r in data["runs"] if r["cpu_s"] is not None)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(json_safe(meta | data), indent=1) + "\n")
    html, png, note = write_figures(data, fig_dir, png=args.png)
    results.parent.mkdir(parents=True, exist_ok=True)

    def rel(path: Path) -> str:
        return Path(os.path.relpath(path.resolve(), results.parent.resolve())).as_posix()

    links = {"html": [rel(h) for h in html], "png": [rel(q) for q in png], "png_note": note, "json": rel(json_path)}
    old = results.read_text() if results.exists() else "# Results\n\n"
    results.write_text(replace_section(old, results_section(data, meta, links)))


def shared_settings(cfg: TrainConfig) -> str:
    """The settings every variant shares, in one line for the page (the variants' own are in the table)."""
    lc, rc, oc = cfg.loss, cfg.rollout, cfg.optim
    return (f"model {cfg.model.name}, {rc.prompts_per_step} prompts x {rc.group_size} samples, "
            f"temperature {rc.temperature}, lr {oc.lr}, beta {lc.beta}, alpha {lc.alpha} ({lc.ref_mode}), "
            f"clip ({lc.clip_low}, {lc.clip_high}), {updates_per_step(cfg)} per step, evaluation "
            f"{'every ' + str(cfg.run.eval_every) + ' steps' if cfg.run.eval_every else 'at the start and end'} "
            f"on {cfg.data.n_val} held-out problems with {cfg.run.eval_samples} samples per prompt")


def updates_per_step(cfg: TrainConfig) -> str:
    """"1 optimizer update" or "N optimizer updates (mini-batches of M prompts, E epochs)" for the page."""
    per = cfg.optim.mini_batch_prompts
    n = (-(-cfg.rollout.prompts_per_step // per) if per else 1) * cfg.optim.epochs
    epochs = f", {cfg.optim.epochs} epochs" if cfg.optim.epochs > 1 else ""
    detail = f" (mini-batches of {per} prompts{epochs})" if per else ""
    return f"{n} optimizer update{'s' if n > 1 else ''}{detail}"


if __name__ == "__main__":
    sys.exit(main())
