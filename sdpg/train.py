"""Command line: `python -m sdpg.train [--section.field VALUE ...]` (the flags: `sdpg.cli`).

Design choices:
- The run goes through the same `RunHandle` the dashboard uses, so the CLI adds only a progress bar and a
  summary. Ctrl-C and SIGTERM (what `docker stop`, systemd and schedulers send) stop cleanly: final
  checkpoint, `stopped` event, then exit.
- Health events are printed as they arrive and in the summary. Exit status: 0 when the run finished or was
  stopped, 1 when it crashed or a health check found an error (e.g. every step skipped), 2 for bad settings or
  an unusable run directory.
"""
from __future__ import annotations

import signal
import sys
import threading
import time

from tqdm import tqdm

from sdpg.cli import build_parser, config_from_args
from sdpg.config import TrainConfig
from sdpg.health import health_events
from sdpg.methods import check_config
from sdpg.run import RunHandle, sigterm_as_ctrl_c


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
    for e in health_events(handle.records.events()):
        lines.append(health_line(e))
    if handle.error:
        lines.append(f"error: {handle.error}")
    return "\n".join(lines)


def health_line(event: dict) -> str:
    return f"health {event.get('severity', 'warning')} at step {event.get('step')}: {event.get('message')} [{event.get('check')}]"


def _exit_status(handle) -> int:
    failed = any(e.get("severity") == "error" for e in health_events(handle.records.events()))
    return 1 if handle.status == "crashed" or failed else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = check_config(config_from_args(args))
        handle = RunHandle(cfg, resume=bool(args.resume), progress=not args.quiet)
    except (ValueError, OSError) as exc:  # OSError: FileNotFoundError, or a run directory we cannot write
        print(f"error: {exc}", file=sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, sigterm_as_ctrl_c) if in_main_thread else None
    try:
        _follow(handle, cfg, quiet=args.quiet)
    finally:
        # after a SIGTERM the process is on its way out: a repeated one stays ignored until it has exited
        if in_main_thread and signal.getsignal(signal.SIGTERM) is sigterm_as_ctrl_c:
            signal.signal(signal.SIGTERM, previous)
    print(summary(handle))
    return _exit_status(handle)


def _follow(handle, cfg: TrainConfig, *, quiet: bool) -> None:
    """Run with a progress bar, printing health events as they come, until the run ends or is interrupted."""
    handle.start()
    bar = tqdm(total=cfg.run.steps, initial=0, desc=cfg.loss.method, disable=quiet, unit="step")
    shown = 0
    try:
        while handle.alive:
            time.sleep(0.5)
            found = health_events(handle.records.events())
            for e in found[shown:]:
                tqdm.write(health_line(e), file=sys.stderr)
            shown = len(found)
            bar.n = handle.step
            last = next((m for m in reversed(handle.records.metrics()) if "reward/mean" in m), None)
            if last:
                bar.set_postfix(reward=f"{last['reward/mean']:.2f}", kl=f"{last.get('kl/distill_mean', 0):.3f}")
            bar.refresh()
    except KeyboardInterrupt:
        print("\nstopping: saving a checkpoint...", file=sys.stderr)
        handle.stop()
    bar.close()


if __name__ == "__main__":
    sys.exit(main())
