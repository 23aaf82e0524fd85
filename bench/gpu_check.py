"""One-GPU check of the real-model path: a few SDPG steps on a Qwen3-0.6B-shaped model, per-phase speed.

    bash bench/gpu_check.sh              # on one H100: <= 8 minutes, no downloads
    python bench/gpu_check.py --dry-run  # the same path on a tiny model, on the CPU, in seconds

For each response length (1k and 4k tokens) it runs SDPG steps through the real trainer (vLLM rollouts
with in-place weight sync, bf16 autocast, gradient checkpointing, token-budget micro-batches) and
reports tokens/s of each phase (rollout, teacher, reference, update), the peak memory, the update
phase's MFU, and the same update with the fused KL and with the materialised-logits path
(`loss.fused_kl` true / false) side by side.

Design choices:
- No downloads: the model is Qwen3-0.6B's shape (`Qwen3Config`, vocabulary 151936) with random weights,
  next to the embedded character tokenizer (ids it does not know decode to nothing). A random model
  almost never samples EOS, so responses run to the length limit: the lengths are what was asked.
  Rewards are all 0 on random text, so the gated distillation term is 0, but every forward, the KL
  and every backward still run: the timings are those of a real step.
- One trainer and one vLLM engine serve every setting (starting vLLM again costs about a minute on a
  GPU); between settings only the length limit and batch shape change.
- Per length: a warm-up step, a timed step with the fused KL (fresh rollout), then the timed
  materialised-logits step replays that step's rollout batch, so the two KL paths update on identical
  tokens and the rollout is not paid twice.
- Tokens/s counts response tokens for every phase. MFU counts model FLOPs of the update phase (student
  forward + backward, 6 x non-embedding parameters per token plus causal attention, plus the LM head for
  the student (6 V H) and the teacher (2 V H) per response token; recomputation is not counted) against
  the card's dense bf16 peak.
- A last check perturbs every weight, syncs, samples and compares vLLM's log-probs with a recompute under
  the new and the previous weights: the in-place sync (and, on a GPU, sleep / wake) must follow the model.
- Results are printed as a markdown table and written after every setting to `--out` (JSON lines), so a
  run cut short by the wrapper's time limit still leaves what it measured.

Shapes: V vocabulary, H hidden size.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdpg.config import TrainConfig  # noqa: E402
from sdpg.forward import lm_head_weight, token_logp  # noqa: E402
from sdpg.memory import ModelShape  # noqa: E402
from sdpg.methods import check_config  # noqa: E402
from sdpg.embedded.tokenizer import build_char_tokenizer  # noqa: E402
from sdpg.records import RecordStream  # noqa: E402
from sdpg.run import build_trainer  # noqa: E402

QWEN3_0_6B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                  rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
"""Qwen3-0.6B's architecture (its config.json), built with random weights"""
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, head_dim=32, max_position_embeddings=256, tie_word_embeddings=True)
"""the dry run's model (vocabulary: the character tokenizer's)"""
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}
"""dense bf16 tensor-core peak by card name"""
PROMPT_TOKENS = 64
"""prompt limit: the embedded task's prompts are ~20-60 characters"""


def build_model_dir(path: Path, shape: dict, device: torch.device) -> Path:
    """A random Qwen3 of `shape` and the character tokenizer, saved as a `save_pretrained` folder."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_char_tokenizer()
    config = Qwen3Config(**{"vocab_size": len(tokenizer), **shape}, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_config(model_dir: Path, run_dir: Path, args) -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.name, cfg.model.device = str(model_dir), args.device
    cfg.model.autocast = cfg.model.gradient_checkpointing = True
    cfg.data.n_train, cfg.data.n_val = 512, 8
    cfg.rollout.engine = args.engine
    cfg.rollout.max_new_tokens, cfg.rollout.max_prompt_tokens = max(args.lengths), PROMPT_TOKENS
    cfg.rollout.vllm_gpu_memory_utilization = args.vllm_share
    cfg.optim.micro_batch_tokens = args.micro_batch_tokens
    cfg.optim.lr = 1e-6
    cfg.run.steps, cfg.run.record_groups, cfg.run.run_dir = 1000, 0, str(run_dir)
    return check_config(cfg)


def set_length(trainer, length: int, response_tokens: int) -> tuple[int, int]:
    """Point the trainer at responses of `length` tokens with about `response_tokens` per step."""
    seqs = max(1, response_tokens // length)
    group = min(8, seqs)
    prompts = max(1, seqs // group)
    r = trainer.cfg.rollout
    r.max_new_tokens, r.prompts_per_step, r.group_size = length, prompts, group
    trainer.engine.max_new_tokens = length
    return prompts, group


def timed_step(trainer, *, fused: bool, replay=None) -> tuple[dict, dict]:
    """One train_step with the given KL path (on `replay`'s batch when given); returns (metrics, batch)."""
    trainer.cfg.loss.fused_kl = fused
    sample, seen = trainer.sample_batch, {}

    def capture():
        seen["batch"] = replay if replay is not None else sample()
        return seen["batch"]

    trainer.sample_batch = capture
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    try:
        metrics = trainer.train_step()
    finally:
        trainer.sample_batch = sample
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        free, total = torch.cuda.mem_get_info()
        metrics["mem/peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        metrics["mem/device_used_gib"] = (total - free) / 2 ** 30
    else:
        metrics["mem/peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    return metrics, seen["batch"]


def update_flops(shape: ModelShape, batch) -> float:
    """Model FLOPs of the update phase for `batch` (see the module docstring)."""
    ro = batch.rollout
    seq_tokens = ro.prompt_mask.sum(-1) + ro.response_mask.sum(-1)  # (B,)
    n_tokens, n_resp = float(seq_tokens.sum()), float(ro.response_mask.sum())
    body = shape.params - shape.vocab * shape.hidden
    attention = 6 * shape.layers * shape.q_dim * float((seq_tokens.float() ** 2).sum()) / 2
    return 6 * body * n_tokens + attention + 8 * shape.vocab * shape.hidden * n_resp


def peak_flops(override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def row(length: int, fused: bool, metrics: dict, batch, shape: ModelShape, peak: float | None, *,
        replayed: bool = False) -> dict:
    """One setting's numbers; a replayed batch has no rollout of its own (its rollout speed is left out)."""
    n_resp = float(batch.rollout.response_mask.sum())
    out = {"length": length, "kl": "fused" if fused else "logits", "sequences": batch.rollout.response_ids.shape[0],
           "response_tokens": int(n_resp)}
    for phase in ("rollout", "teacher", "reference", "update"):
        seconds = metrics[f"time/{phase}"]
        out[f"{phase}_tok_s"] = None if replayed and phase == "rollout" else n_resp / seconds
    out["update_s"] = metrics["time/update"]
    out["mfu_update"] = update_flops(shape, batch) / metrics["time/update"] / peak if peak else None
    out.update({k: v for k, v in metrics.items() if k.startswith("mem/")})
    out["kl_mean"] = metrics.get("kl/distill_mean")
    out["kl_old"] = metrics.get("kl/approx_old")
    return out


@torch.no_grad()
def sync_check(trainer, noise: float = 0.02) -> dict:
    """Perturb every weight, sync, sample: vLLM's log-probs must follow the new weights, not the old ones.

    Returns the mean |old_logp - recomputed log p| under the new and under the previous weights.
    """
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for p in trainer.model.parameters():
        p.add_(noise * torch.randn_like(p))
    trainer.engine.sync_weights(trainer.model)
    prompts = trainer._render([r.prompt for r in trainer.train_rows[:2]])
    ro = trainer.engine.generate(prompts, 2)
    mask = ro.response_mask.bool()

    def recomputed():
        h = trainer._hidden(trainer.model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
        return token_logp(h, lm_head_weight(trainer.model), ro.response_ids,
                          temperature=trainer.cfg.rollout.temperature)  # (B, T)

    new = recomputed()
    after = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.model.load_state_dict(before)
    old = recomputed()
    trainer.model.load_state_dict(after)
    return {"sync/mean_abs_diff_new_weights": float((new - ro.old_logp)[mask].abs().mean()),
            "sync/mean_abs_diff_old_weights": float((old - ro.old_logp)[mask].abs().mean())}


def report(out: Path, result: dict) -> dict:
    """Append one setting's result to `out` and print it."""
    with out.open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps(result), flush=True)
    return result


def markdown(rows: list[dict]) -> str:
    mem = sorted({k for r in rows for k in r if k.startswith("mem/")})
    keys = ["length", "kl", "sequences", "response_tokens", "rollout_tok_s", "teacher_tok_s", "reference_tok_s",
            "update_tok_s", "mfu_update", *mem, "kl_mean", "kl_old"]
    fmt = {float: lambda v: f"{v:.4g}", type(None): lambda v: "-"}
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt.get(type(r.get(k)), str)(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="tiny model, CPU, short lengths: the same path in seconds")
    p.add_argument("--lengths", type=int, nargs="+", help="response lengths (default 1024 4096; dry run 16 32)")
    p.add_argument("--response-tokens", type=int, help="response tokens per step (default 65536; dry run 64)")
    p.add_argument("--micro-batch-tokens", type=int, help="optim.micro_batch_tokens (default 8192; dry run 128)")
    p.add_argument("--engine", choices=("auto", "vllm", "hf"), default="auto", help="auto: vllm when importable")
    p.add_argument("--vllm-share", type=float, default=0.3, help="rollout.vllm_gpu_memory_utilization")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: from its name)")
    p.add_argument("--out", default="runs/gpu_check/results.jsonl", help="JSON lines, one per setting")
    args = p.parse_args(argv)
    args.device = "cpu" if args.dry_run else "auto"
    args.lengths = args.lengths or ([16, 32] if args.dry_run else [1024, 4096])
    args.response_tokens = args.response_tokens or (64 if args.dry_run else 65536)
    args.micro_batch_tokens = args.micro_batch_tokens or (128 if args.dry_run else 8192)
    if args.engine == "auto":
        args.engine = "vllm" if importlib.util.find_spec("vllm") else "hf"
    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run with --dry-run for the CPU version")
    if args.engine == "hf" and not args.dry_run and args.response_tokens > 16384:
        print("vllm is not importable: HF generate keeps every step's logits (16 GiB per 4 x 4096 tokens), so "
              "response tokens per step drop to 16384", file=sys.stderr)
        args.response_tokens = 16384
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        device = torch.device("cpu" if args.dry_run else "cuda")
        model_dir = build_model_dir(Path(tmp) / "model", TINY if args.dry_run else QWEN3_0_6B, device)
        cfg = make_config(model_dir, Path(tmp) / "run", args)
        trainer = build_trainer(cfg, RecordStream(Path(tmp) / "run"), progress=False)
        shape = ModelShape.from_config(trainer.model.config)
        peak = peak_flops(args.peak_tflops)
        print(f"model {shape.params / 1e9:.3f}B parameters on {trainer.device}, engine {args.engine}, "
              f"setup {time.perf_counter() - t0:.0f} s", flush=True)
        rows = []
        try:
            for length in args.lengths:
                prompts, group = set_length(trainer, length, args.response_tokens)
                print(f"length {length}: {prompts} prompts x {group} samples per step", flush=True)
                timed_step(trainer, fused=True)  # warm-up
                metrics, batch = timed_step(trainer, fused=True)
                rows.append(report(out, row(length, True, metrics, batch, shape, peak)))
                metrics, _ = timed_step(trainer, fused=False, replay=batch)
                rows.append(report(out, row(length, False, metrics, batch, shape, peak, replayed=True)))
            sync = report(out, sync_check(trainer))
        finally:
            trainer.verifier.close()
    print(markdown(rows))
    print(f"weight sync: mean |old_logp - log p| {sync['sync/mean_abs_diff_new_weights']:.3g} under the synced "
          f"weights, {sync['sync/mean_abs_diff_old_weights']:.3g} under the previous ones")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
