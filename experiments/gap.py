"""The predictor table: per task and context variant, the student–self-teacher gap before any training.

    python -m experiments.gap [--tasks add sparse reasoning] [--contexts full answer solution]
                              [--k 8] [--problems 64] [--out docs/gap]

Design choices:
- One row per (task, context variant), measured on the warm-started embedded model of that task (built
  and cached on first use) with `sdpg.gap.context_gap`: teacher pass@1 with the context minus the
  student's, and the mean KL(p_student || q_teacher) per token on the student's own samples.
  `experiments.gain` sets these against each method's gain over GRPO in a comparison.
- Held-out (val split) problems, seed 0, the task's own rollout length; the same student samples for
  every variant of a task (seeded), so differences between rows of a task come from the context alone.
- Writes `<out>.json` (rows plus the command, commit and CPU time) and `<out>.md` (the table).

Shapes: none (this module handles figures, not tensors).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from experiments.compare import git_commit
from sdpg.config import DataConfig, ModelConfig
from sdpg.gap import context_gap
from sdpg.embedded.cache import embedded_entry, embedded_settings, read_warmstart_report
from sdpg.models import load_model_and_tokenizer
from sdpg.reward import MathVerifier
from sdpg.tasks import CONTEXTS, TASKS

COLUMNS = ("gap/student_pass@1", "gap/teacher_pass@1", "gap/pass@1", "gap/kl_mean", "gap/response_length")


def measure(task: str, contexts: list[str], *, k: int, problems: int, verifier) -> list[dict]:
    """The gap rows of one task, one per context variant, on its warm-started embedded model."""
    data = DataConfig(task=task)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), data_cfg=data)
    entry = embedded_entry(warm_cfg=embedded_settings(None, data))
    rows = []
    for context in contexts:
        val = TASKS[task].rows(problems, seed=0, split="val", context=context)
        start = time.process_time()
        figures = context_gap(model, tokenizer, val, k=k, verifier=verifier,
                              max_new_tokens=TASKS[task].max_new_tokens)
        rows.append({"task": task, "context": context, **figures, "k": k, "problems": problems,
                     "model": entry.name, "warm_start_s": read_warmstart_report(entry).get("time/warm_start_s"),
                     "cpu_s": round(time.process_time() - start, 1)})
        print(_line(rows[-1]), file=sys.stderr)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    head = ("| task | context | student pass@1 | teacher pass@1 | gap | KL(student‖teacher) per token | "
            "response length |\n|---|---|---|---|---|---|---|\n")
    body = "\n".join(f"| `{r['task']}` | `{r['context']}` | {r['gap/student_pass@1']:.3f} | {r['gap/teacher_pass@1']:.3f} | "
                     f"{r['gap/pass@1']:+.3f} | {r['gap/kl_mean']:.4f} | {r['gap/response_length']:.1f} |" for r in rows)
    return (f"# Student–self-teacher gap before training\n\n"
            f"Per task and teacher context variant, on the warm-started embedded model: {meta['problems']} held-out "
            f"problems x {meta['k']} samples at temperature 1, student and teacher under the same seed. Gap = "
            "teacher pass@1 with the context minus the student's; KL = mean full-vocabulary KL(p_student ‖ "
            "q_teacher) per token of the student's own responses (nats). Context variants: `full` = answer and "
            "worked solution, `answer`, `solution`, `none` = nothing (a control: 0 by construction).\n\n"
            f"{head}{body}\n\nCPU time of the measuring process: {meta['cpu_s'] / 60:.1f} min (warm starts and verifier workers not included). "
            f"Produced by `{meta['command']}` at commit `{meta['commit']}`"
            f"{' (working tree with uncommitted changes)' if meta['dirty'] else ''}, {meta['created']}.\n")


def _line(row: dict) -> str:
    return (f"{row['task']:>9} {row['context']:>8}: student {row['gap/student_pass@1']:.3f} teacher "
            f"{row['gap/teacher_pass@1']:.3f} gap {row['gap/pass@1']:+.3f} KL {row['gap/kl_mean']:.4f}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m experiments.gap", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--contexts", nargs="+", choices=sorted(CONTEXTS), default=["full", "answer", "solution"])
    parser.add_argument("--k", type=int, default=8, help="samples per problem (default: 8)")
    parser.add_argument("--problems", type=int, default=64, help="held-out problems per task (default: 64)")
    parser.add_argument("--out", type=Path, default=Path("docs/gap"), help="writes OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.k < 1 or args.problems < 1:
        parser.error(f"--k and --problems must be >= 1, got {args.k} and {args.problems}")
    torch.manual_seed(0)
    with MathVerifier() as verifier:
        rows = [row for task in args.tasks
                for row in measure(task, args.contexts, k=args.k, problems=args.problems, verifier=verifier)]
    json_path, md_path = args.out.with_suffix(".json"), args.out.with_suffix(".md")
    commit, dirty = git_commit((json_path, md_path))
    meta = {"command": "python -m experiments.gap " + shlex.join(argv), "commit": commit, "dirty": dirty,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "k": args.k,
            "problems": args.problems, "cpu_s": sum(r["cpu_s"] for r in rows)}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(meta | {"rows": rows}, indent=1) + "\n")
    md_path.write_text(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
