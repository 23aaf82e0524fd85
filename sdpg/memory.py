"""Memory planner: will a run fit the device? An estimate from the model's config and the run's lengths.

    python -m sdpg.memory --model Qwen/Qwen3-4B --preset paper --device-gib 80

Legend: P parameters, L layers, H hidden size, I MLP width, V vocabulary, N tokens in a micro-batch.

Design choices:
- The parameter count is exact (the model is built on the meta device); everything else is a formula over
  the config's shape and the run's lengths.
- Two phases share one card: rollout (resident training state plus the rollout engine) and update
  (training state, gradients, one micro-batch's activations and the KL workspace, plus what a sleeping vLLM
  engine keeps).
- Activations count what a Qwen3/Llama-style block saves for backward with fused attention; gradient
  checkpointing keeps each layer's input and recomputes one layer at a time.
- The step's batch itself (ids, masks, texts and verdicts of every sampled sequence) grows with
  prompts x group size in both phases; on a CPU it is what an absurd group size exhausts first.
- On a CPU the device is the host's RAM (the physical total, or the cgroup limit when lower), with a
  Python/torch runtime allowance instead of the CUDA one.
- A runtime allowance and an allocator slack are added: the plan catches runs that are clearly too big
  (off by tens of percent, not by factors); it does not replace a measurement.
- A refusal names the phase and its largest terms and suggests the least disruptive change that fits.
"""
from __future__ import annotations

import operator
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from sdpg.cli import build_parser, config_from_args
from sdpg.config import TrainConfig, micro_rows
from sdpg.embedded.model import TinyModelConfig, build_tiny_model
from sdpg.embedded.tokenizer import build_char_tokenizer
from sdpg.fused_kl import TILE_LOGITS
from sdpg.methods import check_config, get_method
from sdpg.models import EMBEDDED, hub_kwargs

GIB = 1024 ** 3
RUNTIME_BYTES = int(1.5 * GIB)
"""CUDA context, cuBLAS/NCCL workspaces and the like, outside the allocator's view"""
CPU_RUNTIME_BYTES = 1 * GIB
"""the Python interpreter with torch, transformers and the verifier pool loaded, on a CPU run"""
BATCH_BYTES_PER_TOKEN = 64
"""per sampled token of the step's batch: prompt, teacher-prompt and response ids and masks, old log-probs"""
BATCH_BYTES_PER_SEQUENCE = 2048
"""per sampled sequence: its decoded text, verdict and the Python objects around them"""
SLACK = 0.08
"""fraction of the card kept free for allocator fragmentation"""
VLLM_ASLEEP_BYTES = int(0.5 * GIB)
"""what a sleeping vLLM engine still holds (its CUDA graphs and buffers; weights are offloaded)"""
PLAIN_KL_COPIES = 6
"""float32 (N_response, V) tensors alive at the peak of the materialised-logits KL"""
FUSED_KL_TILES = 6
"""float32 TILE_LOGITS tiles alive at once in the fused KL's backward"""
HF_STEP_LOGITS_COPIES = 5
"""float32 (rows, V) tensors alive in one HF sampling step (logits, scaled, log-softmax, warped, probabilities)"""
HF_GENERATE_BATCH = 256
"""sequences per `generate` call in the HF engine (HFRolloutEngine's default batch_size)"""


class MemoryPlanError(ValueError):
    """The run will not fit the device; the message has the plan and a suggested change."""


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in a causal LM's config."""

    params: int
    """P: parameters (tied embeddings counted once)"""
    layers: int
    """L: decoder blocks"""
    hidden: int
    """H: residual width"""
    intermediate: int
    """I: MLP width"""
    vocab: int
    """V: vocabulary size (LM head rows)"""
    q_dim: int
    """attention heads x head width"""
    kv_dim: int
    """key/value heads x head width"""

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """Shape of an HF causal-LM config; the parameter count comes from a meta-device build."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(params=sum(p.numel() for p in model.parameters()), layers=config.num_hidden_layers,
                   hidden=config.hidden_size, intermediate=config.intermediate_size, vocab=config.vocab_size,
                   q_dim=config.num_attention_heads * head_dim, kv_dim=kv_heads * head_dim)

    @property
    def act_values_per_token_layer(self) -> int:
        """Values one block saves for backward per token (fused attention, SwiGLU MLP, pre-norms)."""
        return 6 * self.hidden + 4 * (self.q_dim + self.kv_dim) + 4 * self.intermediate


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per term for each phase, against the device's total."""

    total: int
    """device memory in bytes"""
    rollout: dict[str, int]
    """rollout-phase terms: name -> bytes"""
    update: dict[str, int]
    """update-phase terms: name -> bytes"""
    micro_tokens: int
    """tokens (prompt + response) per update micro-batch the plan assumed"""
    where: str = "device"
    """what `total` is: "device" (a GPU's memory) or "host RAM" (a CPU run)"""

    @property
    def usable(self) -> int:
        return int(self.total * (1 - SLACK))

    @property
    def fits(self) -> bool:
        return max(sum(self.rollout.values()), sum(self.update.values())) <= self.usable

    def table(self) -> str:
        """The plan as aligned text, GiB per term and phase."""
        lines = [f"{self.where} {self.total / GIB:.1f} GiB, usable {self.usable / GIB:.1f} GiB "
                 f"({SLACK:.0%} kept for fragmentation); update micro-batch {self.micro_tokens} tokens"]
        for phase, terms in (("rollout", self.rollout), ("update", self.update)):
            lines.append(f"  {phase} phase: {sum(terms.values()) / GIB:.1f} GiB")
            lines += [f"    {name:<28}{b / GIB:8.2f} GiB" for name, b in terms.items()]
        return "\n".join(lines)


def plan_memory(cfg: TrainConfig, shape: ModelShape, total_bytes: int, *, uses_reference: bool = True,
                on_cpu: bool = False) -> MemoryPlan:
    """Estimated peak bytes of the rollout and update phases of `cfg` for a model of `shape` (`on_cpu`: in
    host RAM)."""
    wbytes = 2 if cfg.model.dtype == "bfloat16" else 4
    abytes = 2 if cfg.model.autocast else wbytes
    r = cfg.rollout
    seq = r.max_prompt_tokens + r.max_new_tokens
    batch = r.prompts_per_step * r.group_size
    micro = micro_batch_tokens(cfg, seq, batch)
    n_resp = micro * r.max_new_tokens // seq
    state = {"weights": shape.params * wbytes, "AdamW state (2 moments)": 2 * shape.params * wbytes}
    if uses_reference:
        state["reference model"] = shape.params * wbytes
    if on_cpu:
        state["Python/torch runtime"] = CPU_RUNTIME_BYTES
    else:
        state["CUDA runtime"] = RUNTIME_BYTES
    state["step batch (ids, texts)"] = batch * (seq * BATCH_BYTES_PER_TOKEN + BATCH_BYTES_PER_SEQUENCE)
    rollout = dict(state)
    if r.engine == "vllm":
        rollout["vLLM share (awake)"] = int(r.vllm_gpu_memory_utilization * total_bytes)
    else:
        rows = min(batch, HF_GENERATE_BATCH)
        rollout["HF generate KV cache"] = rows * seq * shape.layers * 2 * shape.kv_dim * wbytes
        rollout["HF generate step logits"] = HF_STEP_LOGITS_COPIES * rows * shape.vocab * 4
    update = dict(state)
    update["gradients"] = shape.params * wbytes
    update["activations"] = activation_bytes(shape, micro, abytes, cfg.model.gradient_checkpointing)
    update["KL workspace"] = kl_workspace_bytes(shape, n_resp, cfg.loss.fused_kl)
    if r.engine == "vllm" and r.vllm_sleep:
        update["vLLM (asleep)"] = VLLM_ASLEEP_BYTES
    elif r.engine == "vllm":
        update["vLLM share (awake)"] = rollout["vLLM share (awake)"]
    return MemoryPlan(total=total_bytes, rollout=rollout, update=update, micro_tokens=micro,
                      where="host RAM" if on_cpu else "device")


def micro_batch_tokens(cfg: TrainConfig, seq_tokens: int, batch: int) -> int:
    """Tokens per update micro-batch (rows x whole sequence, as if no prompt were shared: an upper bound) with
    rows as the trainer forms them (`sdpg.config.micro_rows`); never more than the step's batch."""
    return min(micro_rows(cfg.optim, cfg.rollout.max_new_tokens), batch) * seq_tokens


def activation_bytes(shape: ModelShape, tokens: int, act_bytes: int, checkpointing: bool) -> int:
    """Saved activations of one micro-batch's student forward (the teacher's and reference's run without grad)."""
    per_layer = tokens * shape.act_values_per_token_layer * act_bytes
    if checkpointing:
        return tokens * shape.layers * shape.hidden * act_bytes + per_layer
    return shape.layers * per_layer + tokens * shape.hidden * 4


def kl_workspace_bytes(shape: ModelShape, response_tokens: int, fused: bool) -> int:
    """Peak extra bytes of the full-vocabulary KL over `response_tokens` tokens."""
    if fused:
        return FUSED_KL_TILES * TILE_LOGITS * 4 + shape.vocab * shape.hidden * 4
    return PLAIN_KL_COPIES * response_tokens * shape.vocab * 4


def suggest(cfg: TrainConfig, shape: ModelShape, total_bytes: int, *, uses_reference: bool = True,
            on_cpu: bool = False) -> str:
    """The least disruptive change that makes the plan fit, as command-line flags, else a sentence."""
    r = cfg.rollout
    seq = r.max_prompt_tokens + r.max_new_tokens
    one_seq = {"optim.micro_batch_tokens": r.max_new_tokens}
    candidates = [{"optim.micro_batch_tokens": 2 ** k} for k in range(24, 9, -1) if 2 ** k >= r.max_new_tokens]
    candidates += [{key: True, **one_seq} for key in ("model.gradient_checkpointing", "loss.fused_kl")
                   if not operator.attrgetter(key)(cfg)]
    if r.engine == "hf":
        candidates += [{"rollout.engine": "vllm"}, {"rollout.engine": "vllm", **one_seq}]
    else:
        candidates += [{"rollout.vllm_gpu_memory_utilization": s / 100, **one_seq}
                       for s in range(round(r.vllm_gpu_memory_utilization * 100) - 5, 4, -5)]
    candidates += [{"rollout.max_new_tokens": 2 ** k, "optim.micro_batch_tokens": 2 ** k}
                   for k in range(20, 6, -1) if 2 ** k < r.max_new_tokens]
    fewer = [{"rollout.prompts_per_step": 2 ** k} for k in range(20, -1, -1) if 2 ** k < r.prompts_per_step]
    fewer += [{"rollout.prompts_per_step": 1, "rollout.group_size": 2 ** k}
              for k in range(10, 0, -1) if 2 ** k < r.group_size]
    shorter = [{"rollout.max_new_tokens": 2 ** k, "optim.micro_batch_tokens": 2 ** k}
               for k in range(20, 6, -1) if 2 ** k < r.max_new_tokens]
    candidates += fewer + [{**batch, **length} for batch in fewer for length in shorter]
    for changes in candidates:
        trial = TrainConfig.from_dict(cfg.to_dict())
        for key, value in changes.items():
            section, name = key.split(".")
            setattr(getattr(trial, section), name, value)
        if plan_memory(trial, shape, total_bytes, uses_reference=uses_reference, on_cpu=on_cpu).fits:
            return " ".join(f"--{k}" if v is True else f"--{k} {v}" for k, v in changes.items())
    per_param = (5 if uses_reference else 4) * (2 if cfg.model.dtype == "bfloat16" else 4)
    largest = (total_bytes * (1 - SLACK) - RUNTIME_BYTES) / per_param
    return (f"a smaller model: weights, gradients, AdamW state{' and reference' if uses_reference else ''} "
            f"take {per_param} bytes per parameter, so at most ~{largest / 1e9:.1f}B parameters fit before "
            f"activations and rollout (this model has {shape.params / 1e9:.2f}B)")


def check_memory(cfg: TrainConfig, shape: ModelShape, total_bytes: int, *, uses_reference: bool = True,
                 on_cpu: bool = False) -> MemoryPlan:
    """The plan when it fits; otherwise MemoryPlanError with the plan and a suggested change."""
    plan = plan_memory(cfg, shape, total_bytes, uses_reference=uses_reference, on_cpu=on_cpu)
    if plan.fits:
        return plan
    phase, terms = max((("rollout", plan.rollout), ("update", plan.update)), key=lambda p: sum(p[1].values()))
    biggest = ", ".join(f"{k} {v / GIB:.1f} GiB" for k, v in sorted(terms.items(), key=lambda kv: -kv[1])[:3])
    raise MemoryPlanError(
        f"{cfg.model.name} will not fit: the {phase} phase needs ~{sum(terms.values()) / GIB:.1f} GiB of "
        f"{plan.usable / GIB:.1f} GiB usable {plan.where} (largest: {biggest}).\n"
        f"Suggested: {suggest(cfg, shape, total_bytes, uses_reference=uses_reference, on_cpu=on_cpu)}\n"
        f"(--no-run.memory_check tries anyway)\n{plan.table()}")


def host_memory_bytes() -> int:
    """The host's RAM: physical memory, or the cgroup (container) limit when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def model_config(cfg: TrainConfig):
    """The HF config of `cfg.model.name` without loading weights ("embedded": the tiny model's shape)."""
    from transformers import AutoConfig

    if cfg.model.name == EMBEDDED:
        with torch.device("meta"):
            return build_tiny_model(build_char_tokenizer(), TinyModelConfig()).config
    return AutoConfig.from_pretrained(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                                      **hub_kwargs(cfg.model.name))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.prog = "python -m sdpg.memory"
    parser.description = "Print the memory plan of a run (same flags as sdpg.train) and whether it fits."
    parser.add_argument("--device-gib", type=float, default=None,
                        help="device memory in GiB (default: the visible CUDA device's total)")
    args = parser.parse_args(argv)
    cfg = check_config(config_from_args(args))
    if args.device_gib is not None:
        total = int(args.device_gib * GIB)
    elif torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory
    else:
        print("error: no CUDA device visible; give --device-gib", file=sys.stderr)
        return 2
    shape = ModelShape.from_config(model_config(cfg))
    print(f"{cfg.model.name}: {shape.params / 1e9:.3f}B parameters, {shape.layers} layers, H={shape.hidden}, "
          f"V={shape.vocab}; response {cfg.rollout.max_new_tokens} + prompt {cfg.rollout.max_prompt_tokens} tokens")
    try:
        uses_reference = get_method(cfg.loss.method).uses_reference(cfg.loss)
        print(check_memory(cfg, shape, total, uses_reference=uses_reference).table())
    except MemoryPlanError as exc:
        print(f"refused: {exc}")
        return 1
    print("fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
