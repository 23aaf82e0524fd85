"""Command line: `python -m sdpg.train [--section.field VALUE ...]`.

Design choices:
- Every config field is a flag, generated from the dataclasses (`--loss.beta 0.05`, `--no-loss.gate`), with
  the field's docstring as its help, so the CLI never drifts from the config. A few everyday fields have
  short aliases (`--method`, `--model`, `--data`, `--steps`, `--seed`, `--run-dir`).
- `--preset paper` starts from the paper's settings; `--config run/config.json` from a saved config;
  flags given on the command line override either. `--resume RUN_DIR` continues a run from its last
  checkpoint with the config saved in that directory.
- The run goes through the same `RunHandle` the dashboard uses; the CLI shows a progress bar and prints a
  summary at the end. Ctrl-C and SIGTERM (what `docker stop`, systemd and schedulers send) stop cleanly:
  final checkpoint, `stopped` event, then exit.
- Health events are printed as they arrive and in the summary. Exit status: 0 when the run finished or
  was stopped, 1 when it crashed or a health check found an error (e.g. every step skipped), 2 for bad
  settings or an unusable run directory.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import signal
import sys
import threading
import time
import typing
from pathlib import Path

from sdpg.config import TrainConfig, preset
from sdpg.health import health_events
from sdpg.records import CONFIG_FILE

ALIASES = {"method": "loss.method", "model": "model.name", "data": "data.train", "steps": "run.steps",
           "seed": "run.seed", "run-dir": "run.run_dir"}


def field_docs(cls) -> dict[str, str]:
    """The docstring written under each dataclass field (STYLE.md habit 1)."""
    docs, tree = {}, ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _parse_value(kind, text: str):
    """Scalar flag values; `X | None` fields accept the word "none"."""
    args = typing.get_args(kind)
    if type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return None if text.lower() == "none" else inner(text)
    return kind(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdpg.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="starting settings")
    parser.add_argument("--config", help="a saved config.json to start from (overrides --preset)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    reverse_alias = {v: k for k, v in ALIASES.items()}
    defaults = TrainConfig()
    for section in dataclasses.fields(TrainConfig):
        sub = getattr(defaults, section.name)
        group = parser.add_argument_group(section.name)
        hints = typing.get_type_hints(type(sub))
        docs = field_docs(type(sub))
        for f in dataclasses.fields(sub):
            key = f"{section.name}.{f.name}"
            names = [f"--{key}"] + ([f"--{reverse_alias[key]}"] if key in reverse_alias else [])
            kind, default = hints[f.name], getattr(sub, f.name)
            common = dict(dest=key, default=argparse.SUPPRESS, help=f"{docs.get(f.name, '')} (default: {default})")
            if kind is bool:
                group.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
            elif typing.get_origin(kind) is tuple:
                group.add_argument(*names, nargs=len(typing.get_args(kind)), type=typing.get_args(kind)[0],
                                   metavar="X", **common)
            else:
                group.add_argument(*names, type=lambda t, k=kind: _parse_value(k, t), metavar="X", **common)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    if args.resume:
        saved = Path(args.resume) / CONFIG_FILE
        if not saved.exists():
            raise SystemExit(f"error: cannot resume: {saved} does not exist")
        cfg = TrainConfig.from_dict(json.loads(saved.read_text()))
        cfg.run.run_dir = args.resume
    elif args.config:
        cfg = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
    else:
        cfg = preset(args.preset)
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, tuple(value) if isinstance(value, list) else value)
    return cfg


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


def _stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def _exit_status(handle) -> int:
    failed = any(e.get("severity") == "error" for e in health_events(handle.records.events()))
    return 1 if handle.status == "crashed" or failed else 0


def main(argv: list[str] | None = None) -> int:
    from sdpg.run import RunHandle

    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args).validate()
        handle = RunHandle(cfg, resume=bool(args.resume), progress=not args.quiet)
    except (ValueError, OSError) as exc:  # OSError: FileNotFoundError, or a run directory we cannot write
        print(f"error: {exc}", file=sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = signal.signal(signal.SIGTERM, _stop_like_ctrl_c) if in_main_thread else None
    try:
        _follow(handle, cfg, quiet=args.quiet)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(summary(handle))
    return _exit_status(handle)


def _follow(handle, cfg: TrainConfig, *, quiet: bool) -> None:
    """Run with a progress bar, printing health events as they come, until the run ends or is interrupted."""
    from tqdm import tqdm

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
