"""Entry point of a run on TRL's stack: `accelerate launch --config_file ACC.yaml -m sdpg.scale.launch [flags]`.

Design choices:
- The flags are the engine's CLI (`python -m sdpg.train --help`: every config field, `--preset`, `--config`) plus
  `--scale.<field>` for `ScaleConfig`, so a `config.json` saved by an engine run starts a TRL run unchanged.
- `--plan DIR` writes what a cluster needs and exits without loading a model: `config.json`, `accelerate.yaml` and
  `launch.sh` (the `trl vllm-serve` command in the background on the GPUs after the training processes' when the
  server is local, then the `accelerate launch` command; the trainer waits for the server). On several machines the
  accelerate command runs on every training machine with its `--machine_rank`.
- Every process loads the same model, rows and verifier (process 0 first, so the embedded model is warm-started
  once); only process 0 writes the record stream. A run without `--run-dir` gets the engine's default name, chosen by
  process 0 and shared with the others.
- A crash is written to the record stream as an `error` event (the dashboard shows it) and re-raised.
- `--resume` is refused: TRL's checkpoints land in `<run_dir>/trl`, but resuming a TRL run is not wired up here.
  Held-out evaluation (`eval/*` metrics) is not run either; use `sdpg.train` on a checkpoint for it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from sdpg.cli import build_parser, config_from_args, field_docs
from sdpg.config import TrainConfig
from sdpg.embedded.cache import embedded_entry, embedded_settings
from sdpg.scale.config import ScaleConfig, check_supported, launch_commands, write_accelerate_config

LOCAL_HOSTS = ("127.0.0.1", "localhost")
"""vLLM server addresses that put the server on the machine launch.sh runs on"""
SCALE = "scale:"
"""prefix of the ScaleConfig flags' argparse destinations (without a dot, which `config_from_args` reads as a
TrainConfig field)"""


def scale_parser() -> argparse.ArgumentParser:
    """The engine's parser plus `--scale.<field>` flags and `--plan`."""
    parser = build_parser()
    parser.prog = "accelerate launch -m sdpg.scale.launch"
    parser.description = "Train with SDPG on TRL's distributed stack (see sdpg/scale/launch.py)."
    group = parser.add_argument_group("scale")
    docs = field_docs(ScaleConfig)
    for f in dataclasses.fields(ScaleConfig):
        common = dict(dest=f"{SCALE}{f.name}", default=argparse.SUPPRESS, help=f"{docs[f.name]} (default: {f.default})")
        if f.type == "bool":
            group.add_argument(f"--scale.{f.name}", action=argparse.BooleanOptionalAction, **common)
        else:
            group.add_argument(f"--scale.{f.name}", type=type(f.default), metavar="X", **common)
    parser.add_argument("--plan", metavar="DIR",
                        help="write config.json, accelerate.yaml and launch.sh to DIR and exit")
    return parser


def scale_from_args(args: argparse.Namespace) -> ScaleConfig:
    values = {key.removeprefix(SCALE): value for key, value in vars(args).items() if key.startswith(SCALE)}
    return ScaleConfig(**values)


def write_plan(cfg: TrainConfig, scale: ScaleConfig, plan_dir: Path) -> list[str]:
    """Write config.json, accelerate.yaml and launch.sh for `cfg` and `scale` to `plan_dir`; return the commands."""
    plan_dir.mkdir(parents=True, exist_ok=True)
    config_file, accelerate_file = plan_dir / "config.json", plan_dir / "accelerate.yaml"
    config_file.write_text(json.dumps(cfg.to_dict(), indent=2))
    write_accelerate_config(cfg, scale, accelerate_file)
    commands = launch_commands(cfg, scale, config_file=str(config_file), accelerate_file=str(accelerate_file),
                               model_path=_server_model(cfg) if scale.vllm_server else None)
    (plan_dir / "launch.sh").write_text("\n".join(["#!/bin/sh", "set -e", *_script_lines(scale, commands)]) + "\n")
    return commands


def _script_lines(scale: ScaleConfig, commands: list[str]) -> list[str]:
    """launch.sh's commands. A server on this machine gets the GPUs after the training processes' (the trainer waits
    for it to come up); a server elsewhere is left as a note."""
    train = commands[-1]
    lines = []
    if scale.vllm_server and scale.vllm_host in LOCAL_HOSTS:
        per_machine = scale.num_processes // scale.num_machines
        server_gpus = range(per_machine, per_machine + scale.vllm_tensor_parallel_size)
        lines.append(f"CUDA_VISIBLE_DEVICES={','.join(map(str, server_gpus))} {commands[0]} &")
        train = f"CUDA_VISIBLE_DEVICES={','.join(map(str, range(per_machine)))} {train}"
    elif scale.vllm_server:
        lines.append(f"# first, on {scale.vllm_host}: {commands[0]}")
    if scale.num_machines > 1:
        lines.append(f"# on each of the {scale.num_machines} training machines, adding --machine_rank 0, 1, ...:")
    return [*lines, train]


def _server_model(cfg: TrainConfig) -> str:
    """What the vLLM server loads first: the model name or folder, or for the embedded model its cache folder
    (warm-started now if missing: the server starts before the training processes)."""
    if cfg.model.name != "embedded":
        return cfg.model.name
    return str(embedded_entry(warm_cfg=embedded_settings(None, cfg.data), progress=False))


def train(cfg: TrainConfig, scale: ScaleConfig, *, quiet: bool = False) -> int:
    """Run `cfg` in this process (one of the `accelerate launch` processes, or the only one)."""
    # imported here, so that --help and --plan run without loading TRL
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list
    from transformers import PrinterCallback

    from sdpg.models import load_model_and_tokenizer
    from sdpg.reward import MathVerifier
    from sdpg.run import default_run_dir, load_data
    from sdpg.scale.records import RecordStreamCallback
    from sdpg.scale.trainer import SDPGTrainer

    state = PartialState()
    shared = [cfg.run.run_dir or str(default_run_dir(cfg))]
    broadcast_object_list(shared)
    cfg.run.run_dir = shared[0]
    with state.main_process_first():
        model, tokenizer = load_model_and_tokenizer(cfg.model, data_cfg=cfg.data, progress=state.is_main_process)
    train_rows, _ = load_data(cfg)
    verifier = MathVerifier(timeout_s=cfg.reward.timeout_s, workers=cfg.reward.workers, scale=cfg.reward.scale)
    records = RecordStreamCallback(cfg.run.run_dir, cfg.to_dict())
    trainer = None
    try:
        trainer = SDPGTrainer(cfg, model=model, tokenizer=tokenizer, train_rows=train_rows, verifier=verifier,
                              scale=scale, callbacks=[records])
        if quiet:
            trainer.remove_callback(PrinterCallback)
        trainer.train()
    except Exception as exc:
        records.record_error(exc, step=trainer.state.global_step if trainer is not None else 0)
        raise
    finally:
        verifier.close()
    if state.is_main_process:
        print(f"run {cfg.run.run_dir}: finished at step {trainer.state.global_step}/{cfg.run.steps}; "
              f"replay with: python app.py --replay {shlex.quote(cfg.run.run_dir)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = scale_parser().parse_args(argv)
    if args.resume:
        print("error: --resume is not supported by sdpg.scale.launch; start a new run (see its module docstring)",
              file=sys.stderr)
        return 2
    try:
        cfg = config_from_args(args)
        check_supported(cfg)
        scale = scale_from_args(args).validate()
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.plan:
        for command in write_plan(cfg, scale, Path(args.plan)):
            print(command)
        return 0
    return train(cfg, scale, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
