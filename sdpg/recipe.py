"""The paper's recipe beside `--preset paper`, as docs/paper-recipe.md (`python -m sdpg.recipe > docs/paper-recipe.md`).

Design choices:
- The paper's values (App. A, Fig. 4, as SPEC.md restates them) and the authors' script's values
  (`examples/rpg2_trainer/run_qwen3_4b_sdpg_boxed.sh` in their verl fork, with verl's defaults where the script
  sets nothing) are data here; ours are read from the preset, so the page cannot drift from the code
  (tests/test_recipe.py compares the committed page with a fresh render).
- The "matches" column is computed by comparing ours with the paper's and the script's values; only the "why"
  is written by hand. A value the paper does not state is None and shown as "—".
- Settings that are engine behaviour rather than config fields read as a fixed text from `ours`.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from sdpg.config import TrainConfig, preset


@dataclass(frozen=True)
class Setting:
    name: str
    """what the setting is, with our flag when there is one"""
    paper: Any
    """the paper's value (None: not stated)"""
    script: Any
    """the authors' script's value, or verl's default where the script leaves it"""
    ours: Callable[[TrainConfig], Any]
    """our value, read from the preset"""
    why: str = ""
    """why ours is what it is, when that is not obvious"""


_MIXED = "fp32 weights, bf16 compute"


def _fixed(text: str) -> Callable[[TrainConfig], str]:
    return lambda cfg: text


SECTIONS: dict[str, list[Setting]] = {
    "Model and data": [
        Setting("model (`--model.name`)", "Qwen/Qwen3-4B", "Qwen/Qwen3-4B", lambda c: c.model.name),
        Setting("precision (`--model.dtype`, `--model.autocast`)", _MIXED, _MIXED,
                lambda c: _MIXED if c.model.autocast and c.model.dtype == "float32" else c.model.dtype,
                "the paper's \"FSDP bf16\" is verl's mixed precision: float32 master weights and AdamW state, bf16 "
                "compute"),
        Setting("gradient checkpointing", None, True, lambda c: c.model.gradient_checkpointing),
        Setting("Qwen3 thinking mode (`--model.enable_thinking`)", None, True, lambda c: c.model.enable_thinking),
        Setting("student prompt and teacher context", "Fig. 4", None, _fixed("Fig. 4"),
                "`sdpg.data.convert_dapo_rows` writes Fig. 4 word for word; the script's data file is not public"),
        Setting("max prompt tokens (`--rollout.max_prompt_tokens`)", 2048, 2048, lambda c: c.rollout.max_prompt_tokens,
                "a longer prompt is an error here; verl truncates it from the left"),
    ],
    "Rollouts": [
        Setting("rollout engine (`--rollout.engine`)", "vllm", "vllm", lambda c: c.rollout.engine),
        Setting("prompts per step (`--rollout.prompts_per_step`)", 128, 128, lambda c: c.rollout.prompts_per_step),
        Setting("responses per prompt (`--rollout.group_size`)", 8, 8, lambda c: c.rollout.group_size),
        Setting("temperature (`--rollout.temperature`)", 1.0, 1.0, lambda c: c.rollout.temperature),
        Setting("top-p (`--rollout.top_p`)", None, 1.0, lambda c: c.rollout.top_p),
        Setting("max response tokens (`--rollout.max_new_tokens`)", 4096, 4096, lambda c: c.rollout.max_new_tokens),
        Setting("dynamic sampling (`--run.dynamic_sampling`)", None, True, lambda c: c.run.dynamic_sampling,
                "the script drops all-equal groups (up to 10 generation rounds); App. A does not mention it, and the "
                "gate already gives all-equal groups no distillation; a flag away"),
        Setting("old log-probs of the PPO ratio", None, "recomputed by the trainer",
                _fixed("the sampler's (vLLM)"),
                "one update per batch here, so the ratio only measures the sampler/trainer gap"),
    ],
    "Rewards and advantages": [
        Setting("verifier reward (`--reward.scale`)", "01", "pm1", lambda c: c.reward.scale,
                "the paper writes R in {0, 1}, the fork's math reward gives +1/-1; with std-scaled advantages and no "
                "penalty both give the same advantages"),
        Setting("overlong buffer, tokens (`--reward.overlong_buffer`)", None, 512, lambda c: c.reward.overlong_buffer,
                "App. A does not mention a length penalty; the script's (512 tokens, factor 1.0) is a flag away"),
        Setting("advantage (`--loss.adv_scale`)", "std", "std", lambda c: c.loss.adv_scale,
                "GRPO: (R - mean) / (std + 1e-6) over the group"),
    ],
    "Optimizer": [
        Setting("learning rate (`--optim.lr`)", 1e-6, 1e-6, lambda c: c.optim.lr),
        Setting("LR warmup steps (`--optim.warmup_steps`)", 10, 10, lambda c: c.optim.warmup_steps,
                "verl's constant schedule with warmup: step k (from 1) at lr * min(1, (k-1)/10), so step 1 at 0"),
        Setting("AdamW betas (`--optim.betas`)", (0.9, 0.999), (0.9, 0.999), lambda c: c.optim.betas),
        Setting("weight decay (`--optim.weight_decay`)", 0.1, 0.1, lambda c: c.optim.weight_decay),
        Setting("gradient clip (`--optim.grad_clip`)", 1.0, 1.0, lambda c: c.optim.grad_clip),
        Setting("prompts per optimizer update", None, 16, lambda c: c.rollout.prompts_per_step,
                "the script takes 8 AdamW steps per rollout batch (ppo_mini_batch_size 16); this engine takes one"),
        Setting("training steps (`--run.steps`)", 400, 400, lambda c: c.run.steps),
    ],
    "Loss": [
        Setting("PPO clip low (`--loss.clip_low`)", 0.2, 0.2, lambda c: c.loss.clip_low),
        Setting("PPO clip high (`--loss.clip_high`)", 0.2, 0.28, lambda c: c.loss.clip_high, "we follow the paper"),
        Setting("dual clip (`--loss.clip_c`)", None, 10.0, lambda c: c.loss.clip_c,
                "always on in the fork's SDPG loss, at the script's 10"),
        Setting("aggregation (`--loss.agg`)", "token-mean", "token-mean", lambda c: c.loss.agg),
        Setting("alpha, reference anchor (`--loss.alpha`)", 1e-3, 1e-3, lambda c: c.loss.alpha),
        Setting("anchor mode (`--loss.ref_mode`)", "urkl", "urkl", lambda c: c.loss.ref_mode),
        Setting("beta_base, distillation KL (`--loss.beta`)", 1e-3, 1e-3, lambda c: c.loss.beta),
        Setting("beta warmup T_warm (`--loss.beta_warmup`)", 50, 0, lambda c: c.loss.beta_warmup,
                "the public script runs without the schedule; we follow the paper"),
        Setting("beta decay T_decay (`--loss.beta_decay`)", 350, 0, lambda c: c.loss.beta_decay,
                "as T_warm; steps count from 1 as in verl, so the last step distils with beta 0"),
        Setting("positive-advantage gate (`--loss.gate`)", True, False, lambda c: c.loss.gate,
                "the public script leaves the gate off; we follow the paper"),
        Setting("per-token KL clamp, nats (`--loss.kl_clamp`)", None, 20.0, lambda c: c.loss.kl_clamp,
                "in the fork's code; a clamped token gets no gradient"),
        Setting("KL temperatures", None, "student: rollout temperature; teacher: 1",
                _fixed("student: rollout temperature; teacher: 1")),
        Setting("entropy bonus", None, 0, _fixed(0)),
    ],
    "Evaluation": [
        Setting("samples per held-out prompt (`--run.eval_samples`)", 32, 32, lambda c: c.run.eval_samples,
                "pass@1 is their mean (mean@32), at the rollout temperature"),
        Setting("evaluate every N steps (`--run.eval_every`)", None, 10, lambda c: c.run.eval_every,
                "32 samples per prompt make evaluation costly; a flag away"),
        Setting("checkpoint every N steps (`--run.save_every`)", None, 20, lambda c: c.run.save_every,
                "a 4B checkpoint with its AdamW state is ~48 GB; a flag away"),
    ],
}


def render(cfg: TrainConfig) -> str:
    """The page for `cfg` (the paper preset): one table per section."""
    lines = [
        "# The paper's recipe beside `--preset paper`",
        "",
        "Generated by `python -m sdpg.recipe > docs/paper-recipe.md` from `sdpg/recipe.py` (the paper's and the",
        "script's values) and `sdpg.config.preset(\"paper\")` (ours); a test fails when they disagree. *Paper*: App. A",
        "and Fig. 4 of arXiv 2606.04036. *Script*: `examples/rpg2_trainer/run_qwen3_4b_sdpg_boxed.sh` in the authors'",
        "verl fork (github lauyikfung/SDPG), with verl's defaults where it sets nothing. — means not stated.",
        "",
    ]
    for section, settings in SECTIONS.items():
        lines += [f"## {section}", "", "| setting | paper | script | ours | matches | why |", "|---" * 6 + "|"]
        for s in settings:
            ours = s.ours(cfg)
            lines.append(f"| {s.name} | {_show(s.paper)} | {_show(s.script)} | {_show(ours)} | "
                         f"{_matches(ours, s.paper, s.script)} | {s.why} |")
        lines.append("")
    return "\n".join(lines)


def _matches(ours: Any, paper: Any, script: Any) -> str:
    same = [name for name, value in (("paper", paper), ("script", script)) if value is not None and value == ours]
    return " and ".join(same) if same else "**neither**"


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


if __name__ == "__main__":
    sys.stdout.write(render(preset("paper")))
