"""Command-line flags for every config field, shared by `sdpg.train`, `sdpg.memory`, `sdpg.scale.launch` and the
experiments.

Design choices:
- Every config field is a flag, generated from the dataclasses (`--loss.beta 0.05`, `--no-loss.gate`), with
  the field's docstring as its help, so the CLI never drifts from the config. A few everyday fields have
  short aliases (`--method`, `--model`, `--data`, `--steps`, `--seed`, `--run-dir`).
- `--preset paper` starts from the paper's settings; `--config run/config.json` from a saved config;
  flags given on the command line override either. `--resume RUN_DIR` continues a run with the config
  saved in that directory.
- `model.trust_remote_code` is never taken from a file (`--config`, `--resume`): only the flag given on this
  command line allows model code to run.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import typing
from pathlib import Path

from sdpg.config import PRESETS, TrainConfig, preset
from sdpg.records import CONFIG_FILE

DESCRIPTION = "Command line: `python -m sdpg.train [--section.field VALUE ...]`."
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
    parser = argparse.ArgumentParser(prog="python -m sdpg.train", description=DESCRIPTION,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="cpu", help="starting settings")
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
    if cfg.model.trust_remote_code:  # a run directory from elsewhere must not be able to run its model code here
        print(f"note: {args.resume or args.config} sets model.trust_remote_code; ignored (a file cannot allow "
              f"model code to run: pass --model.trust_remote_code yourself)", file=sys.stderr)
        cfg.model.trust_remote_code = False
    for key, value in vars(args).items():
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, tuple(value) if isinstance(value, list) else value)
    return cfg
