"""Method comparison: every registered method and the SDPG ablations, same budget, several seeds.

    python -m experiments.compare [--methods ...] [--seeds 0 1 2] [--steps 100] [config flags]

Design choices:
- A variant is a method name plus config settings. Every registered method is a variant (GRPO with
  alpha = 0, i.e. the outcome term only); the SDPG ablations are settings on `sdpg`
  (`sdpg-alpha0`, `sdpg-beta0`, `sdpg-nogate`), never code copies. All variants share one base config
  (the `cpu` preset plus any `sdpg.train` flags given here), the step budget and the seeds.
- Each run is a normal run directory `<out>/<variant>-s<seed>` driven by `RunHandle`, so it can be opened
  in the dashboard. Rerunning the command skips finished runs, resumes interrupted ones from their last
  checkpoint (a run without one starts over) and refuses a directory made with different settings.
- A crashed run is reported in the table and the command goes on with the others (exit status 1).
- Results: `docs/results.md` gets (or has replaced) one section, "Method comparison", with the table,
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
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lab.compare import comparison_figures
from lab.status import replay_status
from sdpg.checkpoint import latest_checkpoint
from sdpg.cli import build_parser as train_parser, config_from_args
from sdpg.config import TrainConfig
from sdpg.methods import METHODS, check_config
from sdpg.records import CONFIG_FILE, EVENTS_FILE, METRICS_FILE, ROLLOUTS_FILE, RecordStream, json_safe

SECTION = "Method comparison"
METHOD_SETTINGS: dict[str, dict[str, Any]] = {"grpo": {"loss.alpha": 0.0}}
"""settings that make a registered method the baseline it is named after (GRPO: the outcome term only)"""
ABLATIONS: dict[str, dict[str, Any]] = {
    "sdpg-alpha0": {"loss.method": "sdpg", "loss.alpha": 0.0},
    "sdpg-beta0": {"loss.method": "sdpg", "loss.beta": 0.0},
    "sdpg-nogate": {"loss.method": "sdpg", "loss.gate": False},
}
CONTROLLED = {"loss.method": "--methods", "run.seed": "--seeds", "run.run_dir": "--out", "run.steps": "--steps"}
"""config fields the experiment sets itself, with the flag that does it"""
CURVE_KEYS = ("reward/mean", "reward/accuracy", "entropy/mean", "kl/distill_mean", "response/length_mean",
              "loss/total", "loss/pg", "loss/distill", "loss/ref_kl", "gate/fraction", "grad/norm", "time/step")
EVAL_KEYS = ("eval/pass@1", "eval/teacher_pass@1", "eval/response_length")
RUN_FILES = (METRICS_FILE, ROLLOUTS_FILE, EVENTS_FILE, CONFIG_FILE)
"""the record files a run directory holds besides checkpoints/"""
TAIL_FRACTION = 0.25
"""entropy, response length and distillation KL are averaged over this last fraction of training steps"""

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
    table = variants()
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(table)}")
    plans = []
    for name in names:
        for seed in seeds:
            cfg = TrainConfig.from_dict(base.to_dict())
            run_dir = out / f"{name}-s{seed}"
            apply_settings(cfg, table[name] | {"run.seed": seed, "run.steps": steps, "run.run_dir": str(run_dir)})
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

def run_all(plans: list[RunPlan]) -> dict[tuple[str, int], str | None]:
    """Run, resume or skip every plan in order; (variant, seed) -> error message (None if it finished)."""
    from tqdm import tqdm

    from sdpg.run import RunHandle

    states = {(p.variant, p.seed): run_state(p) for p in plans}
    done = {(p.variant, p.seed): _steps_done(p, states[(p.variant, p.seed)]) for p in plans}
    errors: dict[tuple[str, int], str | None] = {}
    bar = tqdm(total=sum(p.cfg.run.steps for p in plans), initial=sum(done.values()), unit="step",
               desc="compare", dynamic_ncols=True)
    try:
        for plan in plans:
            key = (plan.variant, plan.seed)
            if states[key] == "finished":
                errors[key] = None
                continue
            if states[key] == "restart":
                _clear_run(plan.run_dir)
            bar.set_description(f"{plan.variant} s{plan.seed}")
            handle = RunHandle(plan.cfg, resume=states[key] == "resume").start()
            errors[key] = _follow(handle, bar, done[key])
    finally:
        bar.close()
    return errors


def _follow(handle, bar, start_step: int) -> str | None:
    """Advance the bar with the run until it ends; Ctrl-C stops it cleanly (checkpoint saved) and re-raises."""
    shown = start_step
    try:
        while handle.alive:
            time.sleep(0.2)
            if handle.step > shown:
                bar.update(handle.step - shown)
                shown = handle.step
    except KeyboardInterrupt:
        handle.stop()
        raise
    handle.join()
    if handle.step > shown:
        bar.update(handle.step - shown)
    return handle.error if handle.status == "crashed" else None


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
    """Final and best held-out pass@1, final teacher pass@1, and late-training means of entropy, length and KL.

    "Final" is the evaluation at the last step; "best" the highest after step 0. Missing values are NaN.
    """
    evals = [m for m in metrics if "eval/pass@1" in m]
    trained = [m for m in evals if m["step"] > 0]
    final = next((m for m in reversed(evals) if m["step"] == steps), {})
    tail_from = steps - max(1, math.ceil(TAIL_FRACTION * steps))
    tail = [m for m in metrics if m["step"] > tail_from and "reward/mean" in m]

    def tail_mean(key):
        values = [m[key] for m in tail if isinstance(m.get(key), (int, float))]
        return statistics.fmean(values) if values else math.nan

    return {
        "final_pass@1": final.get("eval/pass@1", math.nan),
        "best_pass@1": max((m["eval/pass@1"] for m in trained), default=math.nan),
        "teacher_pass@1": final.get("eval/teacher_pass@1", math.nan),
        "entropy": tail_mean("entropy/mean"),
        "response_length": tail_mean("response/length_mean"),
        "distill_kl": tail_mean("kl/distill_mean"),
    }


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
                     "summary": run_summary(metrics, plan.cfg.run.steps)})
        tag = {"variant": plan.variant, "seed": plan.seed}
        curves += [tag | {"step": m["step"]} | {k: m.get(k) for k in CURVE_KEYS} for m in metrics if "reward/mean" in m]
        evals += [tag | {"step": m["step"]} | {k: m.get(k) for k in EVAL_KEYS} for m in metrics if "eval/pass@1" in m]
    names = list(dict.fromkeys(p.variant for p in plans))
    summary = {}
    for name in names:
        mine = [r for r in runs if r["variant"] == name]
        summary[name] = {key: seed_stats([r["summary"][key] for r in mine if r["status"] == "finished"])
                         for key in mine[0]["summary"]}
        summary[name]["runs"] = {"finished": sum(r["status"] == "finished" for r in mine), "total": len(mine)}
    table = variants()
    return {"variants": {n: {"settings": table[n], "description": METHODS[table[n]["loss.method"]].description}
                         for n in names},
            "summary": summary, "runs": runs, "curves": curves, "evals": evals}


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


def results_section(data: dict, meta: dict, links: dict[str, Any]) -> str:
    """The markdown of the "Method comparison" section.

    `links` holds paths relative to the page: "html" and "png" (lists), "json", and "png_note" (text or "").
    """
    head = ("| variant | settings | runs | final pass@1 | best pass@1 | entropy | response length | "
            "KL(student‖teacher) | teacher pass@1 |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, info in data["variants"].items():
        s = data["summary"][name]
        settings = ", ".join(f"{k.split('.')[1]}={v}" for k, v in info["settings"].items() if k != "loss.method")
        rows.append(f"| `{name}` | {settings or 'defaults'} | {s['runs']['finished']}/{s['runs']['total']} | "
                    f"{_fmt(s['final_pass@1'], 3)} | {_fmt(s['best_pass@1'], 3)} | {_fmt(s['entropy'], 3)} | "
                    f"{_fmt(s['response_length'], 1)} | {_fmt(s['distill_kl'], 4)} | {_fmt(s['teacher_pass@1'], 3)} |")
    crashed = [r for r in data["runs"] if r["status"] == "crashed"]
    lines = [f"## {SECTION}", "",
             f"Embedded task, {meta['steps']} training steps per run, seeds {meta['seeds']}; mean ± std over the "
             "seeds whose run finished. Pass@1 is on the held-out problems (final: at the last step; best: the "
             "highest evaluation after step 0); teacher pass@1 is the same model shown the privileged hint, at the "
             f"last step. Entropy, response length (tokens) and the full-vocabulary KL to the live teacher are "
             f"means over the last {TAIL_FRACTION:.0%} of training steps. Shared settings: {meta['base']}.", "",
             head + "\n".join(rows), ""]
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
    """`text` with its "## Method comparison" section (up to the next "## " heading) replaced or appended."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.strip() == f"## {SECTION}"), None)
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
    excludes = [f":(exclude){Path(os.path.relpath(p.resolve())).as_posix()}" for p in outputs]
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
        "Expected time on an idle CPU core (measured upper bounds for the embedded model; runs are sequential):\n"
        f"  runs x (steps x {SECONDS_PER_STEP} s + evaluations x {SECONDS_PER_EVAL} s + {SECONDS_PER_RUN} s),\n"
        "  evaluations = 2 + (steps - 1) // run.eval_every. With the defaults "
        f"({len(names)} variants x 3 seeds x 100 steps, eval every 25):\n"
        f"  about {estimate_seconds(len(names) * 3, 100, 25) / 3600:.1f} h; 6 variants x 3 seeds x 100 steps: "
        f"about {estimate_seconds(18, 100, 25) / 3600:.1f} h.")
    parser = argparse.ArgumentParser(prog="python -m experiments.compare", description=__doc__.split("\n\n")[0],
                                     epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--methods", nargs="+", default=names, metavar="VARIANT", help="variants to run (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per variant (default: 0 1 2)")
    parser.add_argument("--steps", type=int, default=100, help="training steps per run (default: 100)")
    parser.add_argument("--out", type=Path, default=Path("runs/compare"), help="run directories go under here")
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"), help="markdown page to update")
    parser.add_argument("--json", type=Path, default=None, help="curves file (default: compare.json beside --results)")
    parser.add_argument("--figures", type=Path, default=None, help="figure folder (default: figures/ beside --results)")
    parser.add_argument("--model", default=None, help="model name or directory for every run (default: the config's)")
    parser.add_argument("--no-png", dest="png", action="store_false", help="write HTML figures only")
    return parser


def base_config(rest: list[str], parser: argparse.ArgumentParser) -> TrainConfig:
    """The shared config: `sdpg.train`'s preset / --config / flags; fields the experiment controls are refused."""
    train_args = train_parser().parse_args(rest)
    if train_args.resume:
        parser.error("--resume is not an experiment flag: rerunning the same command resumes every run")
    for key, flag in CONTROLLED.items():
        if key in vars(train_args):
            parser.error(f"--{key} is set per run by the experiment; use {flag}")
    return config_from_args(train_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    base = base_config(rest, parser)
    if args.model:
        base.model.name = args.model
    try:
        plans = plan_runs(base, list(dict.fromkeys(args.methods)), list(dict.fromkeys(args.seeds)), args.steps,
                          args.out)
        for plan in plans:
            run_state(plan)  # refuse a mismatched directory before anything runs
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    eta = estimate_seconds(len(plans), args.steps, base.run.eval_every)
    print(f"{len(plans)} runs x {args.steps} steps; expected at most about {eta / 60:.0f} min on an idle CPU",
          file=sys.stderr)
    try:
        errors = run_all(plans)
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
    json_path = args.json or results.with_name("compare.json")
    fig_dir = args.figures or results.parent / "figures"
    commit, dirty = git_commit((results, json_path, fig_dir))
    meta = {"command": "python -m experiments.compare " + shlex.join(argv), "commit": commit, "dirty": dirty,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "steps": args.steps,
            "seeds": sorted({p.seed for p in plans}), "base": shared_settings(base)}
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
            f"clip ({lc.clip_low}, {lc.clip_high}), evaluation "
            f"{'every ' + str(cfg.run.eval_every) + ' steps' if cfg.run.eval_every else 'at the start and end'} "
            f"with {cfg.run.eval_samples} samples per prompt")


if __name__ == "__main__":
    sys.exit(main())


# ----------------------------------------------------------------------------- any runs, side by side

def find_runs(root: str | Path, depth: int = 2) -> list[Path]:
    """Run directories (holding records) under `root`, down to `depth` levels (the comparison's `<out>/<variant>-s<seed>`)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name == "checkpoints":
            continue
        if any((path / f).exists() for f in (METRICS_FILE, EVENTS_FILE, CONFIG_FILE)):
            found.append(path)
        elif depth > 1:
            found += find_runs(path, depth - 1)
    return found


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

