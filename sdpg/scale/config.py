"""Our `TrainConfig` translated for TRL's distributed stack: GRPOConfig fields, an accelerate config, vLLM server flags.

Design choices:
- `TrainConfig` stays the one source of truth for the algorithm; `ScaleConfig` holds only what a single-process
  run has no use for (process count, backend, vLLM server address). Every TRL setting is derived from the two, so a
  run cannot drift from its saved `config.json`.
- Mini-batches as in the engine: a step's `prompts_per_step x group_size` sequences are one TRL generation batch
  (`steps_per_generation` micro-batches per process), each `optim.mini_batch_prompts` groups of it one optimizer
  update (`gradient_accumulation_steps` micro-batches), `optim.epochs` passes (`num_iterations`). TRL's global step
  therefore counts updates: `max_steps`, `save_steps`, the warmup and the beta schedule are scaled back to training
  steps. Micro-batches have at most `optim.micro_batch` sequences (the largest divisor of the per-process share of a
  mini-batch that fits); TRL's micro-batches have a fixed size, so the token budget (`optim.micro_batch_tokens`)
  becomes the number of longest possible responses (the response limit) that fit in it.
- `GRPOConfig.beta` (our `loss.alpha`: the names are swapped) only switches on TRL's frozen reference model and its
  log-probs (it is set to `loss.alpha` when the method anchors to the reference); the trainer replaces TRL's loss,
  so TRL's own k3 term never runs and the anchor is ours (`loss.ref_mode`). Clip settings are passed for TRL's logs only; our loss reads `LossConfig`.
- Precision: the policy is loaded in `model.dtype`; `model.autocast` or bfloat16 weights switch on accelerate's bf16
  mixed precision (under DDP: bfloat16 autocast of the forwards, as the engine's `model.autocast`; under ZeRO-2
  DeepSpeed keeps float32 master weights). `model.device` is accelerate's business and is not read.
- The learning-rate warmup and the weight-decay set are the engine's (`SDPGTrainer` overrides TRL's), so TRL gets a
  constant schedule here.
- Generation: transformers `generate` in each training process (`rollout.engine = "hf"`), TRL's vLLM sharing the
  training GPUs (`rollout.engine = "vllm"`, the engine's in-process vLLM), or a separate `trl vllm-serve` server
  (`scale.vllm_server`). The PPO ratio's old log-probs follow `rollout.recompute_old_logp` as in the engine (see
  `sdpg.scale.trainer`); TRL's truncated importance-sampling correction is off because our loss has no such factor.
- Backends: accelerate DDP ("ddp") and DeepSpeed ZeRO-2 ("zero2"). The fused full-vocabulary KL reads the LM head
  weight directly and recomputes tiles in its backward pass, which needs the weight whole on every process: FSDP and
  ZeRO-3 shard it, and are refused. DDP's search for unused parameters is off: it walks the graph from the forward's
  outputs (final hidden states) and would miss an untied LM head, whose gradient comes from the fused KL; every
  parameter gets a gradient every step.
- Checkpoints are TRL's, in `<run_dir>/trl/checkpoint-N` (N counts updates): every `run.save_every` training steps
  and at the end (with `save_every = 0` at the end only, as the engine does), the last two kept.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdpg.config import TrainConfig, micro_rows
from sdpg.methods import Input, check_config, get_method

BACKENDS = ("ddp", "zero2")
SUPPORTED_NEEDS = frozenset({Input.REF_LOGP, Input.TEACHER_LOGP})
"""LossInputs fields this trainer fills; methods needing more (a frozen teacher on the privileged prompt) are refused"""
TRL_DIR = "trl"
"""TRL's checkpoints go to `<run_dir>/trl`, apart from the engine's own `checkpoints/`"""


@dataclass
class ScaleConfig:
    """Settings of a distributed run that a single-process run has no use for."""

    num_processes: int = 1
    """training processes in total, one per GPU, across all machines"""
    num_machines: int = 1
    """machines the training processes span (the vLLM server runs on GPUs outside them)"""
    backend: str = "ddp"
    """"ddp" (accelerate multi-GPU data parallel) or "zero2" (DeepSpeed ZeRO-2: optimizer state and gradients
    sharded over the processes)"""
    main_process_ip: str = ""
    """address of machine 0, where process 0 listens (needed when num_machines > 1)"""
    main_process_port: int = 29500
    """port process 0 listens on for the rendezvous"""
    vllm_server: bool = False
    """generate with a separate `trl vllm-serve` server (on GPUs outside the training processes) instead of
    `rollout.engine`'s generation inside them"""
    vllm_host: str = "127.0.0.1"
    """address the training processes reach the vLLM server at"""
    vllm_port: int = 8000
    """port of the vLLM server"""
    vllm_tensor_parallel_size: int = 1
    """GPUs one vLLM model replica is split over"""
    vllm_gpu_memory_utilization: float = 0.9
    """vLLM server: share of each of its GPUs' memory it may take (the colocated engine reads
    `rollout.vllm_gpu_memory_utilization`)"""

    def validate(self) -> "ScaleConfig":
        """Raise ValueError naming the first bad field; return self when all is well."""
        checks = [
            ("num_processes", self.num_processes >= 1, "must be >= 1"),
            ("num_machines", 1 <= self.num_machines <= self.num_processes, "must be in [1, num_processes]"),
            ("num_processes", self.num_processes % self.num_machines == 0,
             "must be a multiple of num_machines (the same number of processes on every machine)"),
            ("backend", self.backend in BACKENDS, f"must be one of {BACKENDS}"),
            ("main_process_ip", self.num_machines == 1 or bool(self.main_process_ip),
             "must be set when num_machines > 1"),
            ("vllm_tensor_parallel_size", self.vllm_tensor_parallel_size >= 1, "must be >= 1"),
            ("vllm_gpu_memory_utilization", 0 < self.vllm_gpu_memory_utilization <= 1, "must be in (0, 1]"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"scale.{name}={getattr(self, name)!r} is invalid: {why}")
        return self


def check_supported(cfg: TrainConfig) -> None:
    """Raise ValueError for settings the TRL-based trainer cannot run the way the engine does."""
    needs = get_method(check_config(cfg).loss.method).needs
    if needs - SUPPORTED_NEEDS:
        raise ValueError(f"loss.method={cfg.loss.method!r} needs {sorted(n.value for n in needs - SUPPORTED_NEEDS)}, "
                         f"which the TRL-based trainer does not compute (it fills "
                         f"{sorted(n.value for n in SUPPORTED_NEEDS)}); use sdpg.train")
    if cfg.rollout.group_size < 2:
        raise ValueError(f"rollout.group_size={cfg.rollout.group_size} is invalid here: TRL's GRPO trainer needs >= 2")
    if cfg.run.dynamic_sampling:
        raise ValueError("run.dynamic_sampling=True is not supported by the TRL-based trainer (TRL has no resampling "
                         "of zero-variance groups); turn it off or use sdpg.train")


def batch_layout(cfg: TrainConfig, world_size: int) -> tuple[int, int, int]:
    """(per-device micro-batch, gradient-accumulation steps per update, steps per generation) for one generation
    per training step and one optimizer update per mini-batch of `optim.mini_batch_prompts` groups.

    The micro-batch is the largest divisor of the per-process share of a mini-batch that is at most
    `sdpg.config.micro_rows` for the longest possible response.
    """
    g = cfg.rollout.group_size
    total = cfg.rollout.prompts_per_step * g
    mini = (cfg.optim.mini_batch_prompts or cfg.rollout.prompts_per_step) * g
    if world_size < 1 or mini % world_size:
        raise ValueError(f"a mini-batch's {mini} sequences (optim.mini_batch_prompts, or rollout.prompts_per_step, x "
                         f"rollout.group_size) must split evenly over {world_size} training processes")
    share = mini // world_size
    most = micro_rows(cfg.optim, cfg.rollout.max_new_tokens)
    micro = max(d for d in range(1, min(share, most) + 1) if share % d == 0)
    return micro, share // micro, total // world_size // micro


def updates_per_step(cfg: TrainConfig) -> int:
    """Optimizer updates per training step: mini-batches times epochs (TRL counts these as its global steps)."""
    minis = cfg.rollout.prompts_per_step // (cfg.optim.mini_batch_prompts or cfg.rollout.prompts_per_step)
    return minis * cfg.optim.epochs


def bf16_compute(cfg: TrainConfig) -> bool:
    """Whether the forwards compute in bfloat16 (accelerate's bf16 mixed precision): `model.autocast` or bf16 weights."""
    return cfg.model.autocast or cfg.model.dtype == "bfloat16"


def grpo_kwargs(cfg: TrainConfig, scale: ScaleConfig, world_size: int) -> dict[str, Any]:
    """GRPOConfig keyword arguments for `cfg` run on `world_size` training processes."""
    check_supported(cfg)
    scale.validate()
    if not cfg.run.run_dir:
        raise ValueError("run.run_dir is empty: a TRL run needs its directory (sdpg.scale.launch picks one)")
    if scale.vllm_server and cfg.rollout.top_p != 1.0:
        raise ValueError(f"rollout.top_p={cfg.rollout.top_p} is invalid with scale.vllm_server: must be 1.0 (vLLM's "
                         "log-probs, the old log-probs, would include the top-p truncation)")
    micro, accumulation, per_generation = batch_layout(cfg, world_size)
    r, o, lc = cfg.rollout, cfg.optim, cfg.loss
    updates = updates_per_step(cfg)
    kwargs: dict[str, Any] = {
        "output_dir": str(Path(cfg.run.run_dir) / TRL_DIR), "max_steps": cfg.run.steps * updates, "seed": cfg.run.seed,
        "per_device_train_batch_size": micro, "gradient_accumulation_steps": accumulation,
        "steps_per_generation": per_generation, "num_iterations": o.epochs, "num_generations": r.group_size,
        "max_completion_length": r.max_new_tokens, "temperature": r.temperature, "top_p": r.top_p, "top_k": 0,
        "chat_template_kwargs": {"enable_thinking": cfg.model.enable_thinking},
        "learning_rate": o.lr, "adam_beta1": o.betas[0], "adam_beta2": o.betas[1], "weight_decay": o.weight_decay,
        "max_grad_norm": o.grad_clip, "optim": "adamw_torch", "lr_scheduler_type": "constant",
        "beta": lc.alpha if get_method(lc.method).uses_reference(lc) else 0.0,
        "epsilon": lc.clip_low, "epsilon_high": lc.clip_high,
        "scale_rewards": "group" if lc.adv_scale == "std" else "none",
        "bf16": bf16_compute(cfg),
        "activation_checkpointing": cfg.model.gradient_checkpointing,
        "trust_remote_code": cfg.model.trust_remote_code,
        "logging_strategy": "steps", "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
        "save_strategy": "steps", "save_steps": (cfg.run.save_every or cfg.run.steps) * updates, "save_total_limit": 2,
        "ddp_find_unused_parameters": False,
        "use_vllm": scale.vllm_server or r.engine == "vllm",
    }
    if scale.vllm_server:
        kwargs |= {"vllm_mode": "server", "vllm_server_host": scale.vllm_host, "vllm_server_port": scale.vllm_port}
    elif r.engine == "vllm":
        kwargs |= {"vllm_mode": "colocate", "vllm_gpu_memory_utilization": r.vllm_gpu_memory_utilization,
                   "vllm_enable_sleep_mode": r.vllm_sleep, "vllm_tensor_parallel_size": scale.vllm_tensor_parallel_size,
                   "vllm_max_model_length": r.max_prompt_tokens + r.max_new_tokens}
    if kwargs["use_vllm"]:
        kwargs["vllm_importance_sampling_correction"] = False
    return kwargs


def grpo_config(cfg: TrainConfig, scale: ScaleConfig, world_size: int):
    """TRL's GRPOConfig for `cfg` on `world_size` processes (TRL derives the generation batch from the world size
    of the running process group, so pass that one)."""
    from trl import GRPOConfig

    return GRPOConfig(**grpo_kwargs(cfg, scale, world_size))


def accelerate_config(cfg: TrainConfig, scale: ScaleConfig) -> dict[str, Any]:
    """The `accelerate launch --config_file` settings for machine 0 (other machines override `machine_rank`)."""
    scale.validate()
    batch_layout(cfg, scale.num_processes)
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "debug": False,
        "distributed_type": "MULTI_GPU" if scale.backend == "ddp" else "DEEPSPEED",
        "downcast_bf16": "no", "gpu_ids": "all", "machine_rank": 0, "main_training_function": "main",
        "mixed_precision": "bf16" if bf16_compute(cfg) else "no",
        "num_machines": scale.num_machines, "num_processes": scale.num_processes,
        "rdzv_backend": "static", "same_network": True, "use_cpu": False,
    }
    if scale.backend == "zero2":
        out["deepspeed_config"] = {"deepspeed_multinode_launcher": "standard", "offload_optimizer_device": "none",
                                   "offload_param_device": "none", "zero3_init_flag": False, "zero_stage": 2}
    if scale.num_machines > 1:
        out |= {"main_process_ip": scale.main_process_ip, "main_process_port": scale.main_process_port}
    return out


def write_accelerate_config(cfg: TrainConfig, scale: ScaleConfig, path: str | Path) -> Path:
    """Write `accelerate_config` as YAML to `path`."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(accelerate_config(cfg, scale), sort_keys=True))
    return path


def vllm_serve_args(cfg: TrainConfig, scale: ScaleConfig, model_path: str) -> list[str]:
    """Arguments of `trl vllm-serve` for the server the training processes talk to.

    `model_path` is what the server loads first (a hub id or a folder it can read; for the embedded model, its cache
    folder); the trainer pushes its weights after every optimizer step. The context is the longest prompt plus the
    response limit; TRL adds `--logprobs-mode processed_logprobs` itself, so sampling log-probs include temperature.
    """
    scale.validate()
    if not scale.vllm_server:
        raise ValueError("scale.vllm_server is False: this run generates inside the training processes and needs no "
                         "vLLM server")
    args = ["--model", model_path, "--tensor-parallel-size", str(scale.vllm_tensor_parallel_size),
            "--host", "0.0.0.0", "--port", str(scale.vllm_port),
            "--gpu-memory-utilization", str(scale.vllm_gpu_memory_utilization),
            "--dtype", "bfloat16" if bf16_compute(cfg) else cfg.model.dtype,  # the precision the forwards use
            "--max-model-len", str(cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens)]
    if cfg.model.trust_remote_code:
        args.append("--trust-remote-code")
    return args


def launch_commands(cfg: TrainConfig, scale: ScaleConfig, *, config_file: str, accelerate_file: str,
                    model_path: str | None = None) -> list[str]:
    """Shell commands that start the run: the vLLM server (when used; it loads `model_path` first), then the
    training processes."""
    commands = []
    if scale.vllm_server:
        if model_path is None:
            raise ValueError("launch_commands: a run with scale.vllm_server needs the model_path the server loads")
        commands.append("trl vllm-serve " + shlex.join(vllm_serve_args(cfg, scale, model_path)))
    commands.append(f"accelerate launch --config_file {shlex.quote(accelerate_file)} -m sdpg.scale.launch "
                    f"--config {shlex.quote(config_file)} " + shlex.join(scale_flags(scale)))
    return commands


def scale_flags(scale: ScaleConfig) -> list[str]:
    """`scale` as `sdpg.scale.launch` flags (only the fields that differ from the defaults)."""
    flags = []
    for name, value in vars(scale).items():
        if value == getattr(ScaleConfig, name):
            continue
        if isinstance(value, bool):
            flags.append(f"--scale.{name}" if value else f"--no-scale.{name}")
        else:
            flags += [f"--scale.{name}", str(value)]
    return flags
