"""One training step of a Qwen3-0.6B-shaped model (V = 151936) on the CPU: peak RSS per phase against the planner.

    python bench/real_shape.py              # 2 prompts x 2 samples x 128 tokens, SDPG defaults (~2-4 min, ~13 GB)
    python bench/real_shape.py --dry-run    # the same code path on a tiny model, seconds

Design choices:
- The model is built from a `Qwen3Config` with Qwen3-0.6B's shape (28 layers, H 1024, 16/8 heads of 128,
  MLP 3072, tied head, V 151936) and random weights: no download. It goes through the real `Trainer` (HF
  rollout, reward, teacher forward, fused KL, reference, per-token records for one group, AdamW step).
- Tokens: the embedded character tokenizer covers 58 ids, so it is extended to the full vocabulary with one
  placeholder token per remaining id (`<t58>`, `<t59>`, ...), keeping the characters' ids, the chat template
  and EOS. Prompts encode to the task's characters; the random model samples placeholders, which decode to
  text without a `\\boxed{}`, so every reward is "no answer" (the compute and memory do not depend on that).
- Peak RSS per phase: a thread samples `/proc/self/statm` every few milliseconds and files each sample under the
  phase the step is in, set by wrapping the engine's `generate`, the verifier, `token_record` and the optimizer
  step, and by forward hooks (a forward without gradient outside rollout is a teacher/reference forward; after a
  forward with gradient comes the loss, fused KL and backward).
- The planner (`sdpg.memory.plan_memory`) is asked about the same settings; its rollout and update phases are
  compared with the measured peaks of the matching phases. Before loading anything, a run the planner says
  does not fit into the machine's available memory is refused.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sdpg.config import TrainConfig  # noqa: E402
from sdpg.embedded.tokenizer import build_char_tokenizer  # noqa: E402
from sdpg.memory import GIB, ModelShape, plan_memory  # noqa: E402
from sdpg.methods import get_method  # noqa: E402
from sdpg.models import make_reference  # noqa: E402
from sdpg.records import RecordStream  # noqa: E402
from sdpg.reward import MathVerifier  # noqa: E402
from sdpg.run import load_data  # noqa: E402
import sdpg.trainer as trainer_module  # noqa: E402

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, rope_theta=1e6, rms_norm_eps=1e-6)
DRY_RUN = dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=2, num_key_value_heads=1, head_dim=32)
SECTION = "## A real-vocabulary step on the CPU"
PAGE = os.sysconf("SC_PAGE_SIZE")


class PhaseRSS:
    """Peak resident bytes per phase, from a sampling thread; `phase` is the phase now."""

    def __init__(self, interval_s: float = 0.003):
        self.phase, self.peaks, self.interval_s = "setup", {}, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * PAGE

    def sample(self) -> None:
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), self.rss())

    def set(self, phase: str) -> None:
        self.sample()
        self.phase = phase
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "PhaseRSS":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def wrap(self, owner, name: str, phase: str) -> None:
        """Run `owner.name` in `phase`, returning to the phase it was called in."""
        inner = getattr(owner, name)

        def wrapped(*args, **kwargs):
            before = self.phase
            self.set(phase)
            try:
                return inner(*args, **kwargs)
            finally:
                self.set(before)
        setattr(owner, name, wrapped)

    def hook_forwards(self, model, no_grad_phase: str) -> None:
        """Forwards outside rollout: without gradient -> `no_grad_phase`; with gradient -> student forward, then
        the loss, fused KL and backward."""
        def pre(module, args):
            if self.phase != "rollout":
                self.set("student forward" if torch.is_grad_enabled() else no_grad_phase)

        def post(module, args, out):
            if self.phase == "student forward":
                self.set("loss, fused KL, backward")
        model.base_model.register_forward_pre_hook(pre)
        model.base_model.register_forward_hook(post)


def config(args) -> TrainConfig:
    cfg = TrainConfig()
    cfg.rollout.prompts_per_step, cfg.rollout.group_size = args.prompts, args.samples
    cfg.rollout.max_new_tokens, cfg.rollout.max_prompt_tokens = args.tokens, 64
    cfg.data.n_train, cfg.data.n_val = 64, 4
    cfg.run.steps, cfg.run.eval_every, cfg.run.save_every, cfg.run.record_groups = args.steps, 0, 0, 1
    cfg.model.device = "cpu"
    return cfg.validate()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=1, help="training steps; phases are reported for the last one")
    p.add_argument("--dry-run", action="store_true", help="a tiny model through the same code, in seconds")
    p.add_argument("--write", action="store_true", help="write the table into bench/RESULTS.md")
    args = p.parse_args()
    if args.dry_run:
        args.tokens = min(args.tokens, 16)  # room for the add task's longest answer (validated)
    cfg = config(args)
    hf_config = Qwen3Config(**(DRY_RUN if args.dry_run else QWEN3_06B), tie_word_embeddings=True,
                            max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    shape = ModelShape.from_config(hf_config)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    plan = plan_memory(cfg, shape, available, uses_reference=get_method(cfg.loss.method).uses_reference(cfg.loss))
    need = max(sum(plan.rollout.values()), sum(plan.update.values()))
    if need > available:
        sys.exit(f"refused: the planner expects {need / GIB:.1f} GiB, {available / GIB:.1f} GiB available\n{plan.table()}")
    t_start = time.perf_counter()
    with PhaseRSS() as rss:
        torch.manual_seed(0)
        tokenizer = build_char_tokenizer(hf_config.vocab_size)
        model = Qwen3ForCausalLM(hf_config)
        model.generation_config.pad_token_id, model.generation_config.eos_token_id = 0, 1
        ref = make_reference(model) if get_method(cfg.loss.method).uses_reference(cfg.loss) else None
        train_rows, val_rows = load_data(cfg)
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = trainer_module.Trainer(cfg, model=model, tokenizer=tokenizer, ref_model=ref, train_rows=train_rows,
                                             val_rows=val_rows, records=RecordStream(run_dir),
                                             verifier=MathVerifier(timeout_s=5.0))
            rss.wrap(trainer.engine, "generate", "rollout")
            rss.wrap(trainer.verifier, "score", "reward")
            rss.wrap(trainer.optimizer, "step", "optimizer step")
            rss.wrap(trainer_module, "token_records", "per-token records")  # the name the trainer calls
            rss.hook_forwards(model, "teacher forward (no grad)")
            if ref is not None:
                rss.hook_forwards(ref, "reference forward")
            for step in range(args.steps):
                rss.peaks.clear()
                rss.set("step start")
                t0 = time.perf_counter()
                metrics = trainer.train_step()
                step_s = time.perf_counter() - t0
                rss.set("after step")
            trainer.verifier.close()
    report(args, cfg, shape, plan, rss.peaks, metrics, step_s, time.perf_counter() - t_start)


def records_share(cfg: TrainConfig, metrics: dict, step_s: float) -> str:
    """The per-token records' phase (`time/records`: built in the update, then written) against the whole step."""
    recorded = min(cfg.run.record_groups, cfg.rollout.prompts_per_step) / cfg.rollout.prompts_per_step
    return (f"Records (built and written, `time/records`): {metrics['time/records']:.2f} s = "
            f"**{metrics['time/records'] / step_s:.1%} of the step** ({recorded:.0%} of its responses recorded; "
            f"target ≤ 5 %).")


def report(args, cfg, shape, plan, peaks: dict, metrics: dict, step_s: float, total_s: float) -> None:
    rollout_phases = ("rollout", "reward")
    measured = {"rollout": max(peaks.get(k, 0) for k in rollout_phases),
                "update": max(v for k, v in peaks.items() if k not in rollout_phases)}
    planned = {"rollout": sum(plan.rollout.values()), "update": sum(plan.update.values())}
    lines = [SECTION, "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, nproc {os.cpu_count()}, torch {torch.__version__}, "
             f"load average {os.getloadavg()[0]:.1f}. Model: random Qwen3, {shape.params / 1e9:.3f}B parameters, "
             f"{shape.layers} layers, H {shape.hidden}, V {shape.vocab}, tied head, float32; "
             f"{args.prompts} prompts x {args.samples} samples x {args.tokens} tokens, `--loss.method "
             f"{cfg.loss.method}` defaults (reference model: {get_method(cfg.loss.method).uses_reference(cfg.loss)}), one group recorded. "
             f"Step {args.steps} of {args.steps}: {step_s:.0f} s (rollout {metrics['time/rollout']:.0f} s, teacher "
             f"{metrics['time/teacher']:.0f} s, reference {metrics['time/reference']:.0f} s, update "
             f"{metrics['time/update']:.0f} s, records {metrics['time/records']:.1f} s); whole script "
             f"{total_s / 60:.1f} min.", "", records_share(cfg, metrics, step_s),
             "", f"Command: `python bench/real_shape.py{' --steps ' + str(args.steps) if args.steps != 1 else ''}`. "
             "Peak RSS of the process while the step was in each phase (the phases of the last step; the first "
             "step also creates the AdamW state inside its optimizer step):", "",
             "| phase | peak RSS GiB |", "|---|---|"]
    lines += [f"| {k} | {v / GIB:.2f} |" for k, v in peaks.items()]
    lines += ["", "Against the memory planner (`sdpg.memory.plan_memory`, same settings; its fixed 1.5 GiB CUDA "
              "runtime allowance included):", "", "| phase | measured GiB | planned GiB | measured / planned |",
              "|---|---|---|---|"]
    lines += [f"| {k} | {measured[k] / GIB:.2f} | {planned[k] / GIB:.2f} | {measured[k] / planned[k]:.2f} |"
              for k in ("rollout", "update")]
    lines += ["", "Planner terms:", "", "```", plan.table(), "```", ""]
    text = "\n".join(lines)
    print(text)
    worst = max(measured[k] / planned[k] for k in measured)
    print(f"largest measured / planned: {worst:.2f} ({'within' if worst <= 1.2 else 'OVER'} the 1.2 bound)")
    if args.write and not args.dry_run:
        sys.path.insert(0, str(ROOT / "bench"))
        from peer_trl import write_section
        write_section(ROOT / "bench" / "RESULTS.md", text, SECTION)


if __name__ == "__main__":
    main()
