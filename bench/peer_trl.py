"""Our engine against TRL on the same model, prompts, reward and lengths: seconds per step and peak RSS.

    python bench/peer_trl.py                 # both shapes, writes its section of bench/RESULTS.md (~8 min)
    python bench/peer_trl.py --reps 1 --shapes embedded --no-write    # a quick look
    python bench/peer_trl.py --reps 1 --shapes 25m --engines ours-grpo --ours "--optim.micro_batch 16" --no-write

Design choices:
- Every (engine, shape, repetition) runs in its own child process, started in interleaved order (ours GRPO, TRL
  GRPO, ours SDPG, TRL SDPO, then again), so a load change on the shared machine hits every engine alike and
  each child's peak RSS (`ru_maxrss`) is its engine's alone.
- Same inputs for both: the same model folder (the embedded model from the cache; a randomly initialised
  25M-parameter Qwen3 with the embedded tokenizer, saved once per run), the same training rows in the order our
  prompt sampler takes them, rendered by the same chat template, scored by the same `MathVerifier`; fp32, one
  optimizer step per batch, no reference KL, constant learning rate.
- A step is timed from TRL's `on_step_begin` to `on_step_end` (generation, reward, loss, backward, optimizer) and
  around our `train_step`; the first `--warmup` steps of each child are dropped. Wall time and process CPU time
  (all threads) are both reported: CPU time is steadier when other jobs share the cores.
- Generation is timed by wrapping the model's `generate` in both engines.
- TRL's SDPO gets each row's privileged context as environment feedback (`include_environment_feedback`), the
  closest it comes to our teacher prompt; the rest of its settings are its defaults.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {
    "embedded": {"prompts": 16, "group": 8, "tokens": 16, "steps": 12, "warmup": 3},
    "25m": {"prompts": 8, "group": 8, "tokens": 64, "steps": 3, "warmup": 1},
    "smoke": {"prompts": 2, "group": 2, "tokens": 12, "steps": 1, "warmup": 1},
}
"""per shape: prompts per step, samples per prompt, max new tokens, timed steps and warm-up steps per child"""
ENGINES = {"embedded": ["ours-grpo", "trl-grpo", "ours-sdpg", "trl-sdpo"], "25m": ["ours-grpo", "trl-grpo", "ours-sdpg"],
           "smoke": ["ours-grpo", "trl-grpo", "ours-sdpg", "trl-sdpo"]}
LR = 1e-4
SECTION = "## Against TRL on the same model and batch"


# ---------------------------------------------------------------- children

class StepClock:
    """Wall and CPU seconds of each step, and of `generate` calls within it."""

    def __init__(self):
        self.steps: list[dict] = []
        self._gen_wall = 0.0

    def wrap_generate(self, model) -> None:
        inner = model.generate

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._gen_wall += time.perf_counter() - t0
        model.generate = timed

    def begin(self) -> None:
        self._gen_wall = 0.0
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def end(self, **extra) -> None:
        self.steps.append({"wall": time.perf_counter() - self._t0, "cpu": time.process_time() - self._c0,
                           "generate": self._gen_wall, **extra})


def malloc_trim() -> None:
    """Hand free heap pages back to the OS (glibc): what a step freed but glibc's arenas would keep resident."""
    ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim(0)


def _rows(shape: dict, n_steps: int):
    """The training rows in the order our trainer's prompt sampler takes them (seed 0)."""
    from sdpg.tasks.addition import make_rows
    from sdpg.trainer import PromptSampler

    rows = make_rows(2000, digits=(3, 2), seed=0, split="train")
    return [rows[i] for i in PromptSampler(len(rows), 0).take(shape["prompts"] * n_steps)]


def run_ours(model_dir: str, shape: dict, method: str, trim: bool, flags: str) -> dict:
    from sdpg.cli import build_parser
    from sdpg.config import TrainConfig
    from sdpg.records import RecordStream
    from sdpg.run import build_trainer

    n_steps = shape["warmup"] + shape["steps"]
    cfg = TrainConfig()
    cfg.model.name = model_dir
    cfg.data.n_train, cfg.data.n_val = 2000, 8
    cfg.rollout.prompts_per_step, cfg.rollout.group_size = shape["prompts"], shape["group"]
    cfg.rollout.max_new_tokens = shape["tokens"]
    cfg.loss.method = method
    if method == "grpo":
        cfg.loss.alpha = 0.0
    cfg.optim.lr = LR
    cfg.run.steps, cfg.run.eval_every, cfg.run.save_every = n_steps, 0, 0
    for key, value in vars(build_parser().parse_args(shlex.split(flags))).items():
        if "." in key:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg.run.run_dir = run_dir
        trainer = build_trainer(cfg.validate(), RecordStream(run_dir), progress=False)
        clock = StepClock()
        clock.wrap_generate(trainer.model)
        for _ in range(n_steps):
            clock.begin()
            m = trainer.train_step()
            if trim:
                malloc_trim()
            clock.end(rollout=m["time/rollout"], teacher=m["time/teacher"], reference=m["time/reference"],
                      update=m["time/update"], tokens=m["perf/tokens_per_s"] * m["time/step"],
                      gate=m.get("gate/fraction", 0.0))
        trainer.verifier.close()
    return {"steps": clock.steps[shape["warmup"]:]}


def run_trl(model_dir: str, shape: dict, kind: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from sdpg.data import render_prompts
    from sdpg.reward import MathVerifier

    n_steps = shape["warmup"] + shape["steps"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rows = _rows(shape, n_steps)
    prompts = render_prompts(tokenizer, [r.prompt for r in rows])
    data = Dataset.from_list([{"prompt": p, "answer": r.answer, "privileged_context": r.context}
                              for p, r in zip(prompts, rows)])
    verifier = MathVerifier(timeout_s=5.0)
    clock = StepClock()
    clock.wrap_generate(model)

    def reward(prompts, completions, answer, **kwargs):
        return [v.reward for v in verifier.score(completions, answer)]

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            clock.begin()

        def on_step_end(self, args, state, control, **kwargs):
            clock.end()

    common = dict(output_dir=tempfile.mkdtemp(), max_steps=n_steps, per_device_train_batch_size=shape["prompts"] * shape["group"],
                  gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
                  num_generations=shape["group"], max_completion_length=shape["tokens"], temperature=1.0, top_p=1.0,
                  top_k=0, learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0, beta=0.0,
                  use_cpu=True, bf16=False, report_to="none", logging_steps=1, save_strategy="no",
                  disable_tqdm=True, seed=0, shuffle_dataset=False, dataloader_num_workers=0)
    if kind == "grpo":
        from trl import GRPOConfig, GRPOTrainer
        trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=GRPOConfig(**common), train_dataset=data,
                              processing_class=tokenizer, callbacks=[Timer()])
    else:
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
        from trl.experimental.sdpo import SDPOConfig, SDPOTrainer
        trainer = SDPOTrainer(model=model, reward_funcs=[reward], train_dataset=data,
                              args=SDPOConfig(**common, include_environment_feedback=True),
                              processing_class=tokenizer, callbacks=[Timer()])
    trainer.train()
    verifier.close()
    return {"steps": clock.steps[shape["warmup"]:]}


def child_main(args) -> None:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = SHAPES[args.shape]
    engine, method = args.child.split("-")
    if engine == "ours":
        out = run_ours(args.model, shape, method, args.malloc_trim, args.ours)
    else:
        out = run_trl(args.model, shape, method)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(out))


# ---------------------------------------------------------------- parent

def random_model(folder: Path, spec) -> str:
    """A randomly initialised Qwen3 of `spec` (a TinyModelConfig) with the embedded tokenizer, saved to `folder`."""
    import torch

    from sdpg.embedded.model import build_tiny_model
    from sdpg.embedded.tokenizer import build_char_tokenizer

    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    build_tiny_model(tokenizer, spec).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def embedded_model(folder: Path, wait: bool) -> tuple[str, str]:
    """The embedded model's cache folder (built first when `wait`), else a random model of its shape; and a note."""
    from sdpg.embedded.cache import default_cache_dir, embedded_entry, embedded_key
    from sdpg.embedded.model import TinyModelConfig
    from sdpg.models import EMBEDDED
    from sdpg.embedded.warmstart import WarmStartConfig

    warm = WarmStartConfig()
    if wait or (default_cache_dir() / f"{EMBEDDED}-{embedded_key(warm)}").is_dir():
        return str(embedded_entry(warm_cfg=warm, progress=False)), "the warm-started embedded model from the cache"
    return (random_model(folder, warm.model),
            "**a randomly initialised model of the embedded shape** (the cache had no warm-started model; a random "
            "model rarely samples EOS, so its responses run to the length limit)")


def matmul_gflops(seconds: float = 0.5) -> float:
    """This machine's fp32 matmul throughput right now (512 x 512, torch's threads): how fast the shared CPU is
    running while the children take turns."""
    import torch

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 512 ** 3 / (time.perf_counter() - t0) / 1e9


def run_child(engine: str, shape: str, model_dir: str, malloc_trim: bool, threads: int, log: Path, ours: str) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--child", engine, "--shape", shape, "--model", model_dir, "--out", str(out),
           "--ours", ours]
    if malloc_trim:
        cmd.append("--malloc-trim")
    if threads:
        cmd += ["--threads", str(threads)]
    with open(log, "a") as logf:  # a file, not a pipe: verifier workers may outlive a killed child
        logf.write(f"\n=== {engine} {shape}\n")
        logf.flush()
        rc = subprocess.run(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        raise RuntimeError(f"{engine} on {shape} exited with {rc}; see {log}")
    result = json.loads(out.read_text())
    out.unlink()
    return result


def summarise(results: dict) -> dict:
    """Per (shape, engine): median and spread of wall and CPU s/step, generate s, tokens/s, peak RSS."""
    table = {}
    for (shape, engine), reps in results.items():
        steps = [s for rep in reps for s in rep["steps"]]
        wall, cpu = [s["wall"] for s in steps], [s["cpu"] for s in steps]
        rss = [rep["peak_rss_mib"] for rep in reps]
        row = {"wall": statistics.median(wall), "wall_lo": min(wall), "wall_hi": max(wall),
               "cpu": statistics.median(cpu), "generate": statistics.median(s["generate"] for s in steps),
               "rss": statistics.median(rss), "rss_lo": min(rss), "rss_hi": max(rss), "n": len(steps)}
        if "rollout" in steps[0]:
            for key in ("rollout", "teacher", "reference", "update"):
                row[key] = statistics.median(s[key] for s in steps)
            row["tokens_per_s"] = statistics.median(s["tokens"] / s["wall"] for s in steps)
            row["gate"] = statistics.median(s.get("gate", 0.0) for s in steps)
        row["rep_walls"] = [statistics.median(s["wall"] for s in rep["steps"]) for rep in reps]
        table[(shape, engine)] = row
    return table


def engine_commit() -> str:
    """The checked-out commit, "+changes" when the code differs from it (this table's own file aside)."""
    from experiments.compare import git_commit

    head, dirty = git_commit((ROOT / "bench" / "RESULTS.md",))
    return head[:7] + ("+changes" if dirty else "")


def markdown(table: dict, args, load: tuple, elapsed: float, notes: dict, speed: list[float]) -> str:
    import torch
    import transformers
    import trl

    lines = [SECTION, "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}, "
             f"nproc {os.cpu_count()}, torch {torch.__version__} ({args.threads or torch.get_num_threads()} threads), transformers "
             f"{transformers.__version__}, trl {trl.__version__}, python {platform.python_version()}. "
             f"Load average before / after: {load[0]} / {load[1]}; harness wall time {elapsed / 60:.1f} min; "
             f"engine at commit {engine_commit()}.",
             "", f"Command: `python bench/peer_trl.py --reps {args.reps} --shapes {args.shapes}"
             + (" --malloc-trim" if args.malloc_trim else "") + (f" --threads {args.threads}" if args.threads else "")
             + (f" --engines {args.engines}" if args.engines else "") + (f" --ours {shlex.quote(args.ours)}" if args.ours else "")
             + "`. "
             "Each engine runs in its own process, interleaved; the medians are over all timed steps of all "
             "repetitions (warm-up steps dropped), [min-max] is the spread. CPU s = process CPU time (all threads) "
             "per step; RSS = the process's peak resident memory.", "",
             f"Machine speed while it ran (fp32 512 x 512 matmul, sampled before each child): median "
             f"{statistics.median(speed):.0f} GFLOP/s [{min(speed):.0f}-{max(speed):.0f}]; a shared host drifts, "
             "so the per-repetition ratios under each table show how far one pair of children can move.", ""]
    for shape, spec in SHAPES.items():
        if not any(s == shape for s, _ in table):
            continue
        lines += [f"**{shape}**: {spec['prompts']} prompts x {spec['group']} samples x <= {spec['tokens']} new "
                  f"tokens, fp32; model: {notes[shape]}.", "",
                  "| engine | s/step (wall) | [min-max] | CPU s/step | generate s | split (ours: rollout+reward · teacher · "
                  "reference · update) | peak RSS MiB [min-max] | TRL GRPO / this, wall | TRL GRPO / this, CPU |",
                  "|---|---|---|---|---|---|---|---|---|"]
        base = table.get((shape, "trl-grpo"))
        for engine in ENGINES[shape]:
            row = table.get((shape, engine))
            if row is None:
                continue
            split = (f"{row['rollout']:.2f} · {row['teacher']:.2f} · {row['reference']:.2f} · {row['update']:.2f}"
                     if "rollout" in row else "")
            ratio = f"{base['wall'] / row['wall']:.2f} | {base['cpu'] / row['cpu']:.2f}" if base else " | "
            lines.append(f"| {engine} | {row['wall']:.3f} | [{row['wall_lo']:.3f}-{row['wall_hi']:.3f}] | {row['cpu']:.3f} | "
                         f"{row['generate']:.3f} | {split} | {row['rss']:.0f} [{row['rss_lo']:.0f}-{row['rss_hi']:.0f}] "
                         f"| {ratio} |")
        ours_g, ours_s = table.get((shape, "ours-grpo")), table.get((shape, "ours-sdpg"))
        if base and ours_g:
            lines += ["", "TRL GRPO / our GRPO per repetition (medians of each pair of children): " + ", ".join(
                f"{t / o:.2f}" for t, o in zip(base["rep_walls"], ours_g["rep_walls"]))]
        if ours_g and ours_s:
            lines += ["", f"SDPG / our GRPO: {ours_s['wall'] / ours_g['wall']:.2f} (wall), "
                          f"{ours_s['cpu'] / ours_g['cpu']:.2f} (CPU); per repetition: " + ", ".join(
                              f"{s / g:.2f}" for s, g in zip(ours_s["rep_walls"], ours_g["rep_walls"]))
                      + f". SDPG's gate passed {ours_s['gate']:.0%} of the responses (median per step): its teacher "
                        "ran on those and on the recorded group."]
        lines.append("")
    return "\n".join(lines)


def write_section(path: Path, text: str, section: str = SECTION) -> None:
    """Replace one section of RESULTS.md (from its heading to the next `## `), keeping the others."""
    old = path.read_text() if path.exists() else "# Benchmark results\n"
    if section in old:
        head, rest = old.split(section, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1:] if nxt >= 0 else ""
        new = head + text + ("\n" + tail if tail else "")
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new.rstrip("\n") + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=2, help="child processes per engine and shape")
    p.add_argument("--shapes", default="embedded,25m",
                   help="comma-separated: " + ", ".join(SHAPES) + " (smoke: a seconds-long check of the harness on the 25M model)")
    p.add_argument("--malloc-trim", action="store_true",
                   help="ours: glibc malloc_trim(0) after each step (to measure whether the engine should do it)")
    p.add_argument("--wait-for-embedded", action="store_true",
                   help="warm-start the embedded model when the cache has none (minutes), instead of using a random "
                        "model of its shape")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads per child (default: torch's own); 1 gives steadier CPU times on a busy machine")
    p.add_argument("--engines", help="comma-separated subset of each shape's engines (default: all of them)")
    p.add_argument("--ours", default="", metavar="FLAGS",
                   help='training flags for our engine on top of the bench settings, e.g. "--optim.micro_batch 16"')
    p.add_argument("--no-write", action="store_true", help="print the table, leave bench/RESULTS.md alone")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--shape", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child_main(args)
    os.chdir(ROOT)  # the children run here too; git describes this checkout
    from sdpg.embedded.model import TinyModelConfig

    start, load0 = time.time(), os.getloadavg()
    log = Path(tempfile.gettempdir()) / "peer_trl.log"
    log.write_text("")
    tmp = Path(tempfile.mkdtemp(prefix="peer_trl-"))
    shapes = args.shapes.split(",")
    models = {"25m": random_model(tmp / "25m", TinyModelConfig(hidden_size=512, num_layers=8, num_heads=8,
                                                               num_kv_heads=4, head_dim=64, intermediate_size=1536))}
    models["smoke"] = models["25m"]
    notes = {"25m": "a randomly initialised 25M-parameter Qwen3 (hidden 512, 8 layers, 8/4 heads of 64, MLP 1536, "
                    "tied head) with the embedded tokenizer", "smoke": "the 25M model"}
    if "embedded" in shapes:
        models["embedded"], notes["embedded"] = embedded_model(tmp / "embedded", args.wait_for_embedded)
    results: dict = {}
    speed = []
    for shape in shapes:
        for rep in range(args.reps):
            for engine in ENGINES[shape]:
                if args.engines and engine not in args.engines.split(","):
                    continue
                speed.append(matmul_gflops())
                r = run_child(engine, shape, models[shape], args.malloc_trim, args.threads, log, args.ours)
                results.setdefault((shape, engine), []).append(r)
                print(f"{shape} rep {rep + 1} {engine}: {statistics.median(s['wall'] for s in r['steps']):.3f} s/step, "
                      f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    load1 = os.getloadavg()
    text = markdown(summarise(results), args, (f"{load0[0]:.1f}", f"{load1[0]:.1f}"), time.time() - start, notes,
                    speed)
    print(text)
    if not args.no_write:
        write_section(ROOT / "bench" / "RESULTS.md", text)


if __name__ == "__main__":
    main()
