"""Command line: `python -m sdpg.train [--section.field VALUE ...]` (the flags: `sdpg.cli`).

The run goes through the same `RunHandle` the dashboard uses, so the CLI adds only a progress bar and a
summary; Ctrl-C stops cleanly (checkpoint saved).
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm

from sdpg.cli import build_parser, config_from_args
from sdpg.methods import check_config
from sdpg.run import RunHandle


def summary(handle) -> str:
    metrics = handle.records.metrics()
    evals = [m for m in metrics if "eval/pass@1" in m]
    lines = [f"run {handle.run_dir}: {handle.status} at step {handle.step}/{handle.total_steps}"]
    if evals:
        first, last = evals[0], evals[-1]
        lines.append(f"held-out pass@1 {first['eval/pass@1']:.3f} (step {first['step']}) -> "
                     f"{last['eval/pass@1']:.3f} (step {last['step']}); best "
                     f"{max(m['eval/pass@1'] for m in evals):.3f}")
        lines.append(f"teacher pass@1 with context {first['eval/teacher_pass@1']:.3f} -> {last['eval/teacher_pass@1']:.3f}")
    steps = [m for m in metrics if "reward/mean" in m]
    if steps:
        lines.append(f"last step: reward {steps[-1]['reward/mean']:.3f}, KL(student||teacher) "
                     f"{steps[-1].get('kl/distill_mean', float('nan')):.4f}, {steps[-1]['perf/tokens_per_s']:.0f} tokens/s")
    if handle.error:
        lines.append(f"error: {handle.error}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = check_config(config_from_args(args))
        handle = RunHandle(cfg, resume=bool(args.resume), progress=not args.quiet)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    handle.start()
    bar = tqdm(total=cfg.run.steps, initial=0, desc=cfg.loss.method, disable=args.quiet, unit="step")
    try:
        while handle.alive:
            time.sleep(0.5)
            bar.n = handle.step
            last = next((m for m in reversed(handle.records.metrics()) if "reward/mean" in m), None)
            if last:
                bar.set_postfix(reward=f"{last['reward/mean']:.2f}", kl=f"{last.get('kl/distill_mean', 0):.3f}")
            bar.refresh()
    except KeyboardInterrupt:
        print("\nstopping: saving a checkpoint...", file=sys.stderr)
        handle.stop()
    bar.close()
    print(summary(handle))
    return 1 if handle.status == "crashed" else 0


if __name__ == "__main__":
    sys.exit(main())
