"""Does the student–self-teacher gap predict what distillation gains over GRPO? Gap table against comparisons.

    python -m experiments.gain --gap docs/gap.json --compare docs/science/compare-*.json [--json docs/science/gain.json]

For every (task, context) that a comparison file covers and every distilling variant in it, the gain is the mean
paired (same seed) difference of its held-out pass@1 to GRPO's (final and area under the curve), with its 95 %
bootstrap interval. GRPO never reads the privileged context (its teacher only serves the records), so one GRPO
comparison per task serves every context of that task: a comparison without `grpo` is paired with the one of its
task that has it. The predictor is the gap table's teacher-minus-student pass@1 (and its KL) for that task and
context, measured before training. The table is a description, one row per point: with a handful of points per
variant no correlation coefficient across them means anything, so none is computed. To test whether the gap drives
the gain, vary the gap within one task and look at the dose-response.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


from experiments.stats import paired_difference

BASELINE = "grpo"
METRICS = ("final_pass@1", "auc_pass@1")


def per_seed(compare: dict, variant: str, metric: str) -> dict[int, float]:
    return {r["seed"]: r["summary"][metric] for r in compare["runs"]
            if r["variant"] == variant and r["status"] == "finished" and r["summary"].get(metric) is not None}


def gain_points(gap_rows: list[dict], compares: list[dict]) -> list[dict]:
    """One row per (task, context, distilling variant) with its gap figures and gains over GRPO."""
    gaps = {(r["task"], r["context"]): r for r in gap_rows}
    baselines = {c["task"]: c for c in compares if BASELINE in c["variants"]}
    points = []
    for comp in compares:
        base = comp if BASELINE in comp["variants"] else baselines.get(comp["task"])
        gap = gaps.get((comp["task"], comp["context"]))
        if base is None or gap is None:
            continue
        for variant, spec in comp["variants"].items():
            if variant == BASELINE or spec["settings"].get("loss.method") == BASELINE:
                continue
            row = {"task": comp["task"], "context": comp["context"], "variant": variant,
                   "gap": gap["gap/pass@1"], "gap_kl": gap["gap/kl_mean"],
                   "student_pass@1": gap["gap/student_pass@1"], "teacher_pass@1": gap["gap/teacher_pass@1"]}
            for metric in METRICS:
                row[f"gain_{metric}"] = paired_difference(per_seed(comp, variant, metric),
                                                          per_seed(base, BASELINE, metric))
            points.append(row)
    return points


def _ci(d: dict, digits: int = 3) -> str:
    if not math.isfinite(d.get("mean", math.nan)):
        return "–"
    return f"{d['mean']:+.{digits}f} [{d['lo']:+.{digits}f}, {d['hi']:+.{digits}f}]"


def markdown(points: list[dict]) -> str:
    lines = ["| task | context | variant | gap (teacher − student pass@1) | KL per token | seeds | Δ final pass@1 vs grpo "
             "| Δ pass@1 AUC vs grpo |", "|---|---|---|---|---|---|---|---|"]
    for p in sorted(points, key=lambda p: (p["variant"], p["gap"])):
        lines.append(f"| `{p['task']}` | `{p['context']}` | `{p['variant']}` | {p['gap']:+.3f} | {p['gap_kl']:.3f} | "
                     f"{p['gain_final_pass@1']['n']} | {_ci(p['gain_final_pass@1'])} | {_ci(p['gain_auc_pass@1'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gap", required=True, help="the gap table's JSON (python -m experiments.gap)")
    p.add_argument("--compare", nargs="+", required=True, help="comparison JSON files (python -m experiments.compare)")
    p.add_argument("--json", help="also write the points here")
    args = p.parse_args(argv)
    missing = [f for f in (args.gap, *args.compare) if not Path(f).is_file()]
    if missing:
        p.error(f"no such file: {', '.join(missing)}")
    gap_rows = json.loads(Path(args.gap).read_text())["rows"]
    compares = [json.loads(Path(f).read_text()) for f in args.compare]
    points = gain_points(gap_rows, compares)
    if not points:
        print("no (task, context) of the comparisons is in the gap table, or no GRPO runs to pair with", file=sys.stderr)
        return 1
    print(markdown(points))
    if args.json:
        from sdpg.records import json_safe
        Path(args.json).write_text(json.dumps(json_safe({"points": points}), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
