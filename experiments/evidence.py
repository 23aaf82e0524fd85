"""Per-token evidence from a comparison's records: where the teacher's signal sits, and whether the gate lets it in.

    python -m experiments.evidence runs/compare-sparse [runs/compare ...] [--json docs/evidence.json]

For every variant (run directories `<variant>-s<seed>` under each root), over all recorded groups of all steps
and seeds:
- zero-variance share: the fraction of a step's groups whose rewards are all equal (`adv/zero_var_groups`, all
  groups of every step, not only the recorded ones): no outcome signal there;
- gate share: the fraction of recorded responses the SDPG gate lets through (positive advantage);
- per response class (gated, blocked-correct, wrong): how often the teacher's most likely token is the token the
  student sampled (agreement), and the mean full-vocabulary KL(student || teacher) per token, over all response
  tokens and over the tokens that are digits (where the answer and the worked steps are decided).

The teacher's top-1 is the first entry of the record's `teacher_topk`; KL is the record's `kl` (the live teacher's,
or for a method without one, computed for the records). Shapes: none (records, not tensors).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from sdpg.records import RecordStream, json_safe
from sdpg.runs import find_runs

CLASSES = ("gated", "blocked correct", "wrong")
"""response classes: gate open (a correct response in a group with mixed outcomes); correct but gate closed
(every response of its group correct); incorrect"""


def response_class(resp: dict) -> str:
    if resp["gate"]:
        return "gated"
    return "blocked correct" if resp["correct"] else "wrong"


def run_evidence(run_dir: str | Path) -> dict:
    """Token and response counts of one run, per response class (sums, so that runs pool exactly)."""
    stream = RecordStream.open(run_dir)
    zero_var = [m["adv/zero_var_groups"] for m in stream.metrics() if "adv/zero_var_groups" in m]
    out = {"responses": 0, "zero_var": zero_var, **{c: {"responses": 0, "tokens": 0, "agree": 0, "kl": 0.0,
                                                        "digits": 0, "digit_agree": 0, "digit_kl": 0.0}
                                                    for c in CLASSES}}
    for group in (g for step in stream.rollout_steps() for g in stream.rollouts(step)):  # one step in memory at a time
        for resp in group["responses"]:
            if "kl" not in resp or "teacher_topk" not in resp:
                continue
            cls = out[response_class(resp)]
            out["responses"] += 1
            cls["responses"] += 1
            for token, kl, top in zip(resp["tokens"], resp["kl"].tolist(), resp["teacher_topk"], strict=True):
                agree = len(top) > 0 and top[0][0] == token
                cls["tokens"] += 1
                cls["agree"] += agree
                cls["kl"] += kl
                if token.strip().isdigit():
                    cls["digits"] += 1
                    cls["digit_agree"] += agree
                    cls["digit_kl"] += kl
    return out


def pooled(runs: list[dict]) -> dict:
    """One variant's figures from its runs' counts."""
    total = sum(r["responses"] for r in runs)
    zero_var = [z for r in runs for z in r["zero_var"]]
    row = {"runs": len(runs), "responses": total,
           "zero_var_share": statistics.fmean(zero_var) if zero_var else math.nan,
           "gate_share": sum(r["gated"]["responses"] for r in runs) / total if total else math.nan}
    for c in CLASSES:
        n = {k: sum(r[c][k] for r in runs) for k in runs[0][c]} if runs else {}
        row[c] = {"share": n["responses"] / total if total else math.nan,
                  "agreement": n["agree"] / n["tokens"] if n.get("tokens") else math.nan,
                  "kl_per_token": n["kl"] / n["tokens"] if n.get("tokens") else math.nan,
                  "digit_agreement": n["digit_agree"] / n["digits"] if n.get("digits") else math.nan,
                  "kl_per_digit": n["digit_kl"] / n["digits"] if n.get("digits") else math.nan}
    return row


def evidence(roots: list[str | Path]) -> dict[str, dict]:
    """{'<root name>/<variant>': pooled figures} for every variant under every root."""
    table: dict[str, dict] = {}
    for root in roots:
        by_variant: dict[str, list[dict]] = {}
        for run in find_runs(root, depth=1):
            variant = run.name.rsplit("-s", 1)[0]
            by_variant.setdefault(variant, []).append(run_evidence(run))
        for variant, runs in sorted(by_variant.items()):
            table[f"{Path(root).name}/{variant}"] = pooled(runs)
    return table


def _f(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(table: dict[str, dict]) -> str:
    head = ("| comparison / variant | runs | zero-variance groups | gate share | wrong share | teacher agrees: gated "
            "| blocked correct | wrong | KL/token: gated | blocked correct | wrong | agrees on digits: gated | wrong "
            "| KL/digit: gated | wrong |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in table.items():
        lines.append("| " + " | ".join([
            f"`{name}`", str(r["runs"]), _f(r["zero_var_share"]), _f(r["gate_share"]), _f(r["wrong"]["share"]),
            *(_f(r[c]["agreement"]) for c in CLASSES), *(_f(r[c]["kl_per_token"]) for c in CLASSES),
            _f(r["gated"]["digit_agreement"]), _f(r["wrong"]["digit_agreement"]),
            _f(r["gated"]["kl_per_digit"]), _f(r["wrong"]["kl_per_digit"])]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", help="comparison folders holding <variant>-s<seed> run directories")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    table = evidence(args.roots)
    if not table:
        print(f"no runs with records under {', '.join(args.roots)}", file=sys.stderr)
        return 1
    print(markdown(table))
    if args.json:
        Path(args.json).write_text(json.dumps(json_safe(table), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
