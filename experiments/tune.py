"""A fair comparison: every variant at its own tuned learning rate, then fresh seeds to confirm.

    python -m experiments.tune --task reasoning --methods grpo-anchor sdpg sdpg-nogate self_distill rlsd \\
        --lrs 1e-5 3e-5 1e-4 --tune-seeds 100 101 102 --confirm-seeds 200 201 202 203 204 --steps 40 \\
        [sdpg.train flags, e.g. --run.eval_every 10 --optim.mini_batch_prompts 4] [--jobs 2]

Design choices:
- Two stages, as a careful reviewer asks. Stage 1 (tuning) runs every variant at every learning rate of the grid
  on the tuning seeds and picks, per variant, the rate with the highest mean area under its held-out pass@1 curve
  (ties: the smaller rate); a pick at an end of the grid is flagged, since the optimum may lie beyond it.
  Stage 2 (confirmation) runs each variant at its own rate on seeds not used for tuning; a seed also draws the
  held-out problems (`sdpg.tasks`), so confirmation evaluates on new validation sets. Only Stage 2 is tested.
- Runs are `experiments.compare` runs (`<variant>-lr<rate>-s<seed>`, one process each, resumable), so both stages
  share its runner, its summaries and its figures.
- Statistics (`experiments.stats`): per variant the paired (same seed) difference to the tuned baseline with
  Student's t-interval, the bootstrap interval beside it and the exact sign-flip p (with the smallest p the seed
  count allows); the within-run gain final - step 0 (does the variant learn at all?); and the evaluation noise,
  the SD of step-0 pass@1 over the confirmation runs (the same starting model on each seed's problems and draws).
- The verdict is written by rule, not by hand: "helps" only where the t-interval of Δ final excludes 0 in its
  favour AND the tuned baseline itself improves on its start (its final - step 0 interval above 0); otherwise the
  page says what the intervals do and do not show.
- Output: a JSON file with both stages, the selection rule and every run's summary; a section of the results
  page; the compare figures of Stage 2.

Shapes: none (this module handles records, not tensors).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from experiments.compare import (base_config, check_variants, collect, git_commit, lr_variant, plan_runs,
                                 replace_section, run_all, run_state, shared_settings, write_figures)
from experiments.stats import paired_test, t_interval
from sdpg.config import TrainConfig
from sdpg.records import json_safe

SELECTION_RULE = ("per variant, the learning rate with the highest mean pass@1 AUC over the tuning seeds "
                  "(ties: the smaller rate); a pick at an end of the grid is flagged")
METRICS = ("final_pass@1", "auc_pass@1")
"""the summary keys compared in Stage 2"""


def plans_for(base: TrainConfig, rates: dict[str, list[float]], seeds: list[int], steps: int, out: Path) -> list:
    """`experiments.compare.RunPlan`s for each (variant, rate) and seed under `out`, seed by seed: a stage cut short
    has whole grids for its first seeds."""
    tagged = [lr_variant(name, lr) for name, lrs in rates.items() for lr in lrs]
    return [plan for seed in seeds for plan in plan_runs(base, tagged, [seed], steps, out)]


def select_rates(data: dict, names: list[str], lrs: list[float]) -> dict[str, dict]:
    """Stage 1's choice per variant from `collect`'s data: {"lr", "edge", "auc": {lr: t-interval of AUC}}."""
    out = {}
    for name in names:
        table = {}
        for lr in lrs:
            values = [r["summary"]["auc_pass@1"] for r in data["runs"]
                      if r["variant"] == lr_variant(name, lr) and r["status"] == "finished"]
            table[lr] = t_interval(values)
        scored = [lr for lr in lrs if table[lr]["n"]]
        if not scored:
            raise ValueError(f"no finished tuning run of {name!r}: nothing to choose a learning rate from")
        best = max(scored, key=lambda lr: (table[lr]["mean"], -lr))
        tag, start = lr_variant(name, best), step0_pass(data)
        gains = [r["summary"]["final_pass@1"] - start[(tag, r["seed"])] for r in data["runs"]
                 if r["variant"] == tag and r["status"] == "finished" and (tag, r["seed"]) in start]
        out[name] = {"lr": best, "edge": len(lrs) > 1 and best in (min(lrs), max(lrs)),
                     "auc": {f"{lr:g}": table[lr] for lr in lrs}, "gain": t_interval(gains)}
    return out


def step0_pass(data: dict) -> dict[tuple[str, int], float]:
    """(variant, seed) -> held-out pass@1 at step 0."""
    return {(e["variant"], e["seed"]): e["eval/pass@1"] for e in data["evals"]
            if e["step"] == 0 and isinstance(e.get("eval/pass@1"), (int, float))}


def confirm_stats(data: dict, chosen: dict[str, dict], baseline: str) -> dict:
    """Stage 2's statistics: per variant Δ vs the tuned baseline, final - step 0, and the evaluation noise."""
    start = step0_pass(data)
    finished = [r for r in data["runs"] if r["status"] == "finished"]

    def by_seed(name: str, key: str) -> dict[int, float]:
        tag = lr_variant(name, chosen[name]["lr"])
        return {r["seed"]: r["summary"][key] for r in finished if r["variant"] == tag}

    out = {}
    for name in chosen:
        tag = lr_variant(name, chosen[name]["lr"])
        gain = {r["seed"]: r["summary"]["final_pass@1"] - start[(tag, r["seed"])]
                for r in finished if r["variant"] == tag and (tag, r["seed"]) in start}
        out[name] = {"lr": chosen[name]["lr"], "runs": len(by_seed(name, "final_pass@1")),
                     "step0": t_interval([start[(tag, s)] for s in by_seed(name, "final_pass@1") if (tag, s) in start]),
                     "gain": t_interval(list(gain.values())) | {"p": paired_test(gain, dict.fromkeys(gain, 0.0))["p"]},
                     **{key: t_interval(list(by_seed(name, key).values())) for key in METRICS}}
        if name != baseline:
            out[name]["vs_baseline"] = {key: paired_test(by_seed(name, key), by_seed(baseline, key)) for key in METRICS}
    noise = list(start.values())
    return {"variants": out, "baseline": baseline,
            "eval_noise_sd": statistics.stdev(noise) if len(noise) > 1 else math.nan, "eval_noise_n": len(noise)}


def verdict(name: str, stats: dict) -> str:
    """The decision the page states for `name` against the tuned baseline, by the module's rule."""
    base = stats["variants"][stats["baseline"]]
    mine = stats["variants"][name]["vs_baseline"]["final_pass@1"]
    learns = base["gain"]["lo"] > 0
    if mine["n"] < 2:
        return "too few paired seeds to say anything"
    if mine["lo"] > 0 and learns:
        return "helps: the interval of Δ final excludes 0 and the tuned baseline itself learns"
    if mine["lo"] > 0:
        return ("ahead, but the tuned baseline does not improve on its start here, so the lead may be the "
                "baseline's instability rather than teaching")
    if mine["hi"] < 0:
        return "behind the tuned baseline (the interval of Δ final is below 0)"
    return "no difference shown: the interval of Δ final contains 0"


# ----------------------------------------------------------------------------- the page

def _ci(stat: dict, digits: int = 3, sign: bool = False) -> str:
    if stat is None or not stat.get("n") or math.isnan(stat["mean"]):
        return "–"
    f = f"{{:+.{digits}f}}" if sign else f"{{:.{digits}f}}"
    if stat["n"] < 2:
        return f.format(stat["mean"])
    return f"{f.format(stat['mean'])} [{f.format(stat['lo'])}, {f.format(stat['hi'])}]"


def section(result: dict) -> str:
    """The results-page section of a tuned comparison (heading "Tuned comparison: <task>"); with Stage 1 alone
    (`result["confirm"]` None) it shows the tuning table and says that no difference is claimed from it."""
    meta, chosen, stats = result["meta"], result["selection"], result["confirm"]
    lrs = meta["lrs"]
    tune_head = ("| variant | " + " | ".join(f"AUC at lr {lr:g}" for lr in lrs) + " | chosen lr | final − step 0 at "
                 "the chosen lr |\n|---|" + "---|" * len(lrs) + "---|---|\n")
    tune_rows = [f"| `{name}` | " + " | ".join(_ci(info["auc"][f"{lr:g}"]) for lr in lrs)
                 + f" | {info['lr']:g}{' (grid edge)' if info['edge'] else ''} | {_ci(info.get('gain'), sign=True)} |"
                 for name, info in chosen.items()]
    lines = [
        f"## Tuned comparison: {meta['task']}", "",
        f"Embedded task `{meta['task']}`, {meta['steps']} training steps per run. Shared settings (the learning rate is "
        f"each variant's): {meta['base']}.",
        "",
        f"**Stage 1 — tuning** on seeds {meta['tune_seeds']}: every variant at lr ∈ {{{', '.join(f'{x:g}' for x in lrs)}}}. "
        f"Rule: {SELECTION_RULE}. Mean AUC of held-out pass@1 with its 95 % t-interval over the tuning seeds:", "",
        tune_head + "\n".join(tune_rows), ""]
    if stats is None:
        lines += ["**Stage 2 — confirmation on fresh seeds has not been run yet.** Stage 1's seeds chose the rates, so "
                  "no difference between variants is claimed from them.", ""]
    else:
        lines += _confirm_lines(meta, stats)
    lines += [f"CPU time: {meta['cpu_s'] / 60:.1f} min (all stages run, all sittings).", ""]
    if result["links"]["html"]:
        lines += ["Figures of Stage 2 (interactive HTML): "
                  + ", ".join(f"[{Path(p).stem}]({p})" for p in result["links"]["html"]) + ".", ""]
    lines += [f"Every run's summary: [{Path(result['links']['json']).name}]({result['links']['json']}).", "",
              "Produced by:", "", f"    {meta['command']}", "",
              f"at commit `{meta['commit']}`{' (working tree with uncommitted changes)' if meta['dirty'] else ''}, "
              f"{meta['created']}.", ""]
    return "\n".join(lines)


def _confirm_lines(meta: dict, stats: dict) -> list[str]:
    base = stats["baseline"]
    head = ("| variant | lr | runs | step-0 pass@1 | final pass@1 | final − step 0 (p) | Δ final vs tuned "
            f"`{base}` (p) | Δ AUC vs tuned `{base}` (p) | verdict |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, s in stats["variants"].items():
        vs = s.get("vs_baseline")
        delta = (lambda k: f"{_ci(vs[k], sign=True)} ({vs[k]['p']:.3f})") if vs else (lambda k: "baseline")
        rows.append(f"| `{name}` | {s['lr']:g} | {s['runs']} | {_ci(s['step0'])} | {_ci(s['final_pass@1'])} | "
                    f"{_ci(s['gain'], sign=True)} ({s['gain']['p']:.3f}) | {delta('final_pass@1')} | "
                    f"{delta('auc_pass@1')} | {verdict(name, stats) if vs else '—'} |")
    n = len(meta["confirm_seeds"])
    return [f"**Stage 2 — confirmation** on fresh seeds {meta['confirm_seeds']} (each seed draws its own held-out "
            "problems), every variant at its chosen lr. Means over seeds with 95 % Student t-intervals (n − 1 degrees "
            f"of freedom); Δ is paired by seed against the tuned `{base}`; p is the exact two-sided sign-flip p-value "
            f"(with {n} pairs the smallest possible p is {2 / 2 ** n:.4f}). Evaluation noise: step-0 pass@1 of the "
            f"same starting model has SD {stats['eval_noise_sd']:.4f} over the {stats['eval_noise_n']} confirmation "
            "runs.", "", head + "\n".join(rows), ""]


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m experiments.tune", description=__doc__.split("\n\n")[0],
                                     allow_abbrev=False)
    parser.add_argument("--task", default="reasoning", help="embedded task (default: reasoning)")
    parser.add_argument("--methods", nargs="+", required=True, metavar="VARIANT",
                        help="variants of experiments.compare (e.g. grpo-anchor sdpg sdpg-nogate self_distill rlsd)")
    parser.add_argument("--baseline", default=None, help="the variant every other is compared with (default: the first)")
    parser.add_argument("--lrs", nargs="+", type=float, required=True, help="learning-rate grid of Stage 1")
    parser.add_argument("--tune-seeds", nargs="+", type=int, required=True)
    parser.add_argument("--confirm-seeds", nargs="+", type=int, required=True)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--stage", choices=("tune", "all"), default="all",
                        help="'tune' runs and reports Stage 1 only; 'all' both stages (default)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/tuned-<task>)")
    parser.add_argument("--results", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--json", type=Path, default=None, help="default: docs/science/tuned-<task>.json")
    parser.add_argument("--figures", type=Path, default=None, help="default: docs/science/figures/tuned-<task>")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    overlap = set(args.tune_seeds) & set(args.confirm_seeds)
    if overlap:
        parser.error(f"confirmation seeds must be fresh; {sorted(overlap)} are also tuning seeds")
    if any(lr <= 0 for lr in args.lrs):
        parser.error(f"--lrs must be positive, got {args.lrs}")
    names = list(dict.fromkeys(args.methods))
    baseline = args.baseline or names[0]
    try:
        check_variants(names)
        if baseline not in names:
            raise ValueError(f"--baseline {baseline!r} is not among --methods {names}")
    except ValueError as exc:
        parser.error(str(exc))
    base = base_config(rest, parser, args.task)
    out = args.out or Path(f"runs/tuned-{args.task}")
    lrs = sorted(set(args.lrs))
    tune_plans = plans_for(base, {n: lrs for n in names}, args.tune_seeds, args.steps, out / "tune")
    for plan in tune_plans:
        run_state(plan)
    errors = run_all(tune_plans, jobs=args.jobs)
    tune_data = collect(tune_plans, errors)
    chosen = select_rates(tune_data, names, lrs)
    print("chosen: " + ", ".join(f"{n} lr {c['lr']:g}{' (edge)' if c['edge'] else ''}" for n, c in chosen.items()),
          file=sys.stderr)
    confirm_data = None
    if args.stage == "all":
        confirm_plans = plans_for(base, {n: [c["lr"]] for n, c in chosen.items()}, args.confirm_seeds, args.steps,
                                  out / "confirm")
        errors |= run_all(confirm_plans, jobs=args.jobs)
        confirm_data = collect(confirm_plans, errors)
    write(args, argv, base, lrs, tune_data, confirm_data, chosen, baseline)
    return 1 if any(errors.values()) else 0


def write(args, argv, base: TrainConfig, lrs, tune_data: dict, confirm_data: dict | None, chosen: dict,
          baseline: str) -> None:
    """The JSON file, Stage 2's figures (with Stage 2) and the results-page section."""
    json_path = args.json or Path(f"docs/science/tuned-{args.task}.json")
    fig_dir = args.figures or Path(f"docs/science/figures/tuned-{args.task}")
    commit, dirty = git_commit((args.results, json_path, fig_dir))
    confirm_runs = confirm_data["runs"] if confirm_data else []
    cpu = sum(r["cpu_s"] or 0.0 for r in tune_data["runs"] + confirm_runs)
    meta = {"command": "python -m experiments.tune " + shlex.join(argv), "commit": commit, "dirty": dirty,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "task": args.task,
            "steps": args.steps, "lrs": lrs, "tune_seeds": args.tune_seeds, "confirm_seeds": args.confirm_seeds,
            "base": re.sub(r"lr [^,]+, ", "", shared_settings(base)), "cpu_s": cpu, "selection_rule": SELECTION_RULE}
    html = write_figures(confirm_data, fig_dir, png=False)[0] if confirm_data else []

    def rel(path: Path) -> str:
        return Path(os.path.relpath(Path(path).resolve(), args.results.resolve().parent)).as_posix()

    result = {"meta": meta, "context": base.data.context, "selection": chosen,
              "variants": confirm_data["variants"] if confirm_data else {},
              "confirm": confirm_stats(confirm_data, chosen, baseline) if confirm_data else None,
              "tune_runs": tune_data["runs"], "confirm_runs": confirm_runs,
              "curves": confirm_data["curves"] if confirm_data else [],
              "evals": (confirm_data["evals"] if confirm_data else []) + [e | {"stage": "tune"} for e in tune_data["evals"]],
              "links": {"html": [rel(h) for h in html], "json": rel(json_path)}}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(json_safe(result), indent=1) + "\n")
    old = args.results.read_text() if args.results.exists() else "# Results\n\n"
    args.results.write_text(replace_section(old, section(result)))


if __name__ == "__main__":
    sys.exit(main())
