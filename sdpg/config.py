"""Run configuration: one dataclass per concern, a docstring under every field.

Design choices:
- Defaults are sized for the embedded task on a 2-core CPU; `preset("paper")` gives the paper's
  Qwen3-4B settings (SPEC.md, "Reference settings").
- A config round-trips through plain dicts (`to_dict` / `from_dict`) so a run directory can save the
  resolved config and a replay or resume can rebuild it; unknown keys are an error, not ignored.
- `validate()` checks each field and names the offending one. What only the method registry knows (a
  registered name, settings the method can train with) is `sdpg.methods.check_config`'s, so the config
  stays below the methods that read it.
"""
from __future__ import annotations

import dataclasses
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any

from sdpg.losses import ADV_SCALES, AGG_MODES, REF_MODES
from sdpg.tasks import CONTEXTS, TASKS, get_task, tasks_with_difficulty
from sdpg.tracking import TRACKERS, missing_package

ROLLOUT_ENGINES = ("hf", "vllm")
DTYPES = ("float32", "bfloat16")
PRESETS = ("cpu", "paper")
REWARD_SCALES = ("01", "pm1")
# Upper bounds far above any real run: they stop a typo (or 1e30 typed into a page) before anything is
# allocated; the memory planner judges what fits in between.
MAX_GROUP_SIZE = 1024
MAX_PROMPTS_PER_STEP = 16384
MAX_TOKENS = 1 << 20
MAX_STEPS = 10_000_000
MAX_ROWS = 10_000_000
MAX_RECORD_GROUPS = 1024
MAX_TEMPERATURE = 100.0
MIN_TEMPERATURE = 1e-3
"""lowest temperature: logits / T must stay finite (at 1e-40 they overflow to inf and sampling fails); at 1e-3
sampling is already greedy in effect"""


@dataclass
class ModelConfig:
    name: str = "embedded"
    """"embedded" (the built-in tiny Qwen3 model, warm-started on the embedded task), an HF model id
    such as "Qwen/Qwen3-0.6B", or a local directory in `save_pretrained` format"""
    dtype: str = "float32"
    """parameter dtype for training: "float32" or "bfloat16" """
    trust_remote_code: bool = False
    """allow model code shipped with the checkpoint to run (off unless you trust the source)"""
    enable_thinking: bool = False
    """passed to chat templates that support it (Qwen3): let the model emit <think> blocks"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass to save memory"""
    autocast: bool = False
    """run the model's forwards in bfloat16 under torch.autocast (mixed precision: parameters, gradients
    and AdamW state stay in `dtype`; the fused KL still computes in float32)"""
    device: str = "auto"
    """where the model trains: "auto" (the first CUDA device when there is one, else "cpu"), "cpu",
    "cuda" or "cuda:N" """


@dataclass
class DataConfig:
    train: str = "embedded"
    """"embedded" (the synthetic arithmetic task) or a .parquet / .jsonl file in verl's layout"""
    val: str = "embedded"
    """held-out prompts: "embedded" or a file in the same layout"""
    task: str = "add"
    """embedded data: which task of `sdpg.tasks.TASKS` ("add", "sparse", "reasoning"; docs/tasks.md); the
    embedded model is warm-started on it"""
    context: str = "full"
    """embedded data: the privileged context variant the teacher sees ("full" = answer and worked solution,
    "answer", "solution", "none")"""
    digits: tuple[int, int] = (3, 2)
    """add task: digits of the two addends (the difficulty knob; the other tasks have a fixed one)"""
    n_train: int = 20000
    """embedded task: number of training problems generated"""
    n_val: int = 256
    """embedded task: number of held-out problems (disjoint from training)"""
    skip_bad_rows: bool = False
    """when loading files: skip malformed rows (and report how many) instead of failing"""
    require_context: bool = False
    """refuse rows that give the teacher no privileged context (no sentinel, or nothing after it) when the
    method needs a teacher, instead of warning and counting them"""


@dataclass
class RolloutConfig:
    engine: str = "hf"
    """rollout engine: "hf" (transformers generate on the training model) or "vllm" (an in-process vLLM
    engine that receives the weights after every step; needs the vllm package)"""
    prompts_per_step: int = 16
    """prompts sampled per training step"""
    group_size: int = 8
    """responses sampled per prompt (G)"""
    temperature: float = 1.0
    """sampling temperature (also applied to the student's logits in the loss)"""
    top_p: float = 1.0
    """nucleus sampling threshold (1.0 = off)"""
    max_new_tokens: int = 24
    """response length limit in tokens"""
    max_prompt_tokens: int = 512
    """prompts longer than this (in tokens, teacher side included) are an error"""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM engine on a GPU: fraction of the card's memory it holds while awake (weights + KV cache)"""
    vllm_sleep: bool = True
    """vLLM engine on a GPU: free its weights and KV cache between rollouts so the update gets the card
    (ignored where vLLM has no sleep mode, e.g. on a CPU)"""
    recompute_old_logp: bool = True
    """take the PPO ratio's old log-probs from a no-grad forward of the training model (same autocast as the
    update) before the step's first update, as verl does, so the first ratio is exactly 1 whatever sampled; the
    sampler's log-probs are kept and their gap reported (`rollout/logp_gap_mean`, `_max`). Off: the sampler's"""


@dataclass
class RewardConfig:
    timeout_s: float = 5.0
    """per-answer verifier time limit in seconds; a timeout scores 0 and is counted in `reward/timeouts`"""
    workers: int = 1
    """verifier worker processes"""
    overlong_buffer: int = 0
    """DAPO soft overlong penalty: tokens before max_new_tokens where the penalty ramps in (0 = off)"""
    overlong_penalty: float = 1.0
    """DAPO soft overlong penalty at the length limit, in the units of `scale` (added to the verifier's reward, as the
    authors' fork adds its penalty factor 1.0 to its -1/+1 rewards)"""
    scale: str = "01"
    """verifier reward: "01" (1 correct, 0 wrong, the paper's R) or "pm1" (+1 correct, -1 wrong, the authors' fork);
    with std-scaled advantages the two train alike unless a penalty is added"""


@dataclass
class LossConfig:
    method: str = "sdpg"
    """training method: a name registered in `sdpg.methods.METHODS` ("sdpg", "grpo", ...)"""
    beta: float = 0.05
    """weight of the full-vocabulary self-distillation KL (beta_base in the paper); TRL's GRPO has no such term
    (its `beta` is our `alpha`)"""
    alpha: float = 1e-3
    """weight of the reference-model anchor L_K: what TRL's `GRPOConfig.beta` weighs (the names are swapped)"""
    ref_mode: str = "urkl"
    """reference anchor: "urkl" (paper default), "ufkl", "rkl", "fkl", or "k3" (GRPO's estimator)"""
    gate: bool = True
    """count the distillation KL only on responses with positive advantage"""
    beta_warmup: int = 0
    """training steps over which beta ramps up linearly (T_warm; 0 = no ramp); training step k (from 1, as verl
    counts) gets beta * min(1, k / T_warm) * min(1, (T - k) / T_decay), so step 1 has beta / T_warm; the schedule
    advances per training step, not per optimizer update"""
    beta_decay: int = 0
    """training steps before the end over which beta ramps down to 0 (T_decay; 0 = no decay)"""
    clip_low: float = 0.2
    """PPO ratio clip below 1"""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (DAPO clip-higher uses 0.28)"""
    clip_c: float | None = None
    """dual-clip cap for negative advantages (10 in the authors' script; None = off)"""
    adv_scale: str = "std"
    """group advantage: "std" divides by the group's std (GRPO), "none" only centres (Dr.GRPO)"""
    agg: str = "token-mean"
    """loss aggregation: one of `sdpg.losses.AGG_MODES`"""
    fused_kl: bool = True
    """compute KL, log-probs and entropy chunk by chunk from hidden states (never the full logits)"""
    rlsd_lambda: float = 0.5
    """RLSD: weight in [0, 1] of the teacher-evidence factor in the token advantage at step 0 (0 = plain GRPO)"""
    rlsd_lambda_decay_steps: int = 50
    """RLSD: steps over which rlsd_lambda decays linearly to 0 (0 = constant)"""
    rlsd_eps_w: float = 0.2
    """RLSD: the evidence weight exp(sign(A) * (log q - log p_old)) is clipped to [1 - eps_w, 1 + eps_w]"""
    kl_clamp: float = 20.0
    """cap on each token's distillation KL in the loss, in nats (a clamped token gets no gradient; the authors' fork
    clamps at 20); metrics and records keep the unclamped KL; 0 = off"""
    opsd_teacher_temperature: float = 1.0
    """OPSD methods: temperature dividing the frozen teacher's logits (the fork's `opsd_teacher_temperature`; the
    OPSD paper uses the sampling temperature); 1.0 = raw logits"""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """AdamW learning rate"""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    grad_clip: float = 1.0
    """gradient-norm clip"""
    warmup_steps: int = 0
    """linear learning-rate warmup in training steps, as verl's: training step k (from 1) runs at
    lr * min(1, (k - 1) / warmup_steps), so the first step's rate is 0 (0 = no warmup); all updates of a step
    share its rate"""
    mini_batch_prompts: int = 0
    """prompt groups per optimizer update (verl's ppo_mini_batch_size): the step's rollout batch is cut, in order,
    into mini-batches of this many whole groups, one AdamW update each (0 = the whole batch, one update)"""
    epochs: int = 1
    """passes over the step's mini-batches (verl's ppo_epochs), the same mini-batches in the same order each pass"""
    micro_batch: int = 64
    """at most this many sequences per forward/backward pass; gradients accumulate over a mini-batch"""
    micro_batch_tokens: int = 1024
    """and at most this many padded response tokens per pass (rows x longest response; at least one sequence;
    0 = no token limit): what a pass's activations grow with, as a group's shared prompt runs once per pass
    (`sdpg.forward.response_hidden`). Raise it on a GPU"""


@dataclass
class RunConfig:
    steps: int = 200
    """training steps (one rollout batch each, and one optimizer update per mini-batch of it)"""
    seed: int = 0
    """seed for data order, sampling and the embedded model"""
    run_dir: str = ""
    """where records and checkpoints go ("" = runs/<method>-<timestamp>)"""
    eval_every: int = 25
    """held-out evaluation every N steps (0 = only at start and end)"""
    eval_samples: int = 4
    """samples per held-out prompt: pass@1 is their mean, pass@k is any-correct"""
    save_every: int = 50
    """checkpoint every N steps (0 = only on stop/finish)"""
    record_groups: int = 2
    """groups per step kept as per-token rollout records"""
    record_cache_mb: float = 256.0
    """MiB of per-token rollout records a run keeps in memory for its views (older steps are read back from disk)"""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and top up with fresh prompts"""
    max_resample: int = 3
    """dynamic sampling: extra rollout rounds per step at most"""
    memory_check: bool = True
    """on a CUDA device, estimate the run's memory before loading the model and refuse a run that will
    not fit, with a suggested change (`python -m sdpg.memory` prints the plan)"""
    report_to: str = ""
    """mirror the metrics to an experiment tracker: "trackio", "wandb" or "tensorboard" ("" = off; the
    package is not a requirement, install it to use it)"""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        parts = {}
        for f in dataclasses.fields(cls):
            sub_cls = f.default_factory().__class__
            values = dict(d.get(f.name, {}))
            known = {sf.name for sf in dataclasses.fields(sub_cls)}
            unknown = set(values) - known
            if unknown:
                raise ValueError(f"config section '{f.name}' has unknown keys {sorted(unknown)}; known: {sorted(known)}")
            for sf in dataclasses.fields(sub_cls):
                if sf.name in values and isinstance(values[sf.name], list):
                    values[sf.name] = tuple(values[sf.name])
            parts[f.name] = sub_cls(**values)
        return cls(**parts)

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the first bad field; return self when all is well."""
        checks = [
            ("loss.ref_mode", self.loss.ref_mode in REF_MODES, f"must be one of {REF_MODES}"),
            ("loss.agg", self.loss.agg in AGG_MODES, f"must be one of {AGG_MODES}"),
            ("loss.adv_scale", self.loss.adv_scale in ADV_SCALES, f"must be one of {ADV_SCALES}"),
            _span("loss.beta", self.loss.beta, 0, math.inf),
            _span("loss.alpha", self.loss.alpha, 0, math.inf),
            _span("loss.beta_warmup", self.loss.beta_warmup, 0, MAX_STEPS),
            _span("loss.beta_decay", self.loss.beta_decay, 0, MAX_STEPS),
            _span("loss.clip_low", self.loss.clip_low, 0, 1, hi_open=True),
            _span("loss.clip_high", self.loss.clip_high, 0, math.inf),
            ("loss.clip_c", self.loss.clip_c is None or 1 < self.loss.clip_c < math.inf,
             "must be > 1 and finite, or None"),
            _span("loss.rlsd_lambda", self.loss.rlsd_lambda, 0, 1),
            _span("loss.rlsd_lambda_decay_steps", self.loss.rlsd_lambda_decay_steps, 0, MAX_STEPS),
            _span("loss.rlsd_eps_w", self.loss.rlsd_eps_w, 0, 1, hi_open=True),
            ("loss.kl_clamp", _finite(self.loss.kl_clamp) and self.loss.kl_clamp >= 0,
             "must be >= 0 (--loss.kl_clamp 0 turns the clamp off)"),
            _span("loss.opsd_teacher_temperature", self.loss.opsd_teacher_temperature, MIN_TEMPERATURE,
                  MAX_TEMPERATURE),
            ("model.dtype", self.model.dtype in DTYPES, f"must be one of {DTYPES}"),
            ("model.device", self.model.device in ("auto", "cpu", "cuda") or
             re.fullmatch(r"cuda:\d+", self.model.device) is not None, "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"),
            ("rollout.engine", self.rollout.engine in ROLLOUT_ENGINES, f"must be one of {ROLLOUT_ENGINES}"),
            ("rollout.top_p", self.rollout.engine != "vllm" or self.rollout.top_p == 1.0,
             "must be 1.0 with rollout.engine='vllm' (vLLM's log-probs would include the top-p truncation)"),
            _span("rollout.vllm_gpu_memory_utilization", self.rollout.vllm_gpu_memory_utilization, 0, 1,
                  lo_open=True, hi_open=True),
            _span("rollout.group_size", self.rollout.group_size, 1, MAX_GROUP_SIZE),
            _span("rollout.prompts_per_step", self.rollout.prompts_per_step, 1, MAX_PROMPTS_PER_STEP),
            _span("rollout.temperature", self.rollout.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE),
            _span("rollout.top_p", self.rollout.top_p, 0, 1, lo_open=True),
            _span("rollout.max_new_tokens", self.rollout.max_new_tokens, 1, MAX_TOKENS),
            _span("rollout.max_prompt_tokens", self.rollout.max_prompt_tokens, 1, MAX_TOKENS),
            _span("reward.timeout_s", self.reward.timeout_s, 0, 3600, lo_open=True),
            _span("reward.workers", self.reward.workers, 1, 256),
            ("reward.scale", self.reward.scale in REWARD_SCALES, f"must be one of {REWARD_SCALES}"),
            ("reward.overlong_buffer", 0 <= self.reward.overlong_buffer < self.rollout.max_new_tokens,
             "must be in [0, rollout.max_new_tokens)"),
            _span("reward.overlong_penalty", self.reward.overlong_penalty, 0, math.inf),
            _span("optim.lr", self.optim.lr, 0, math.inf, lo_open=True),
            ("optim.betas", len(self.optim.betas) == 2 and all(_finite(b) and 0 <= b < 1 for b in self.optim.betas),
             "must be two numbers in [0, 1)"),
            _span("optim.weight_decay", self.optim.weight_decay, 0, math.inf),
            _span("optim.grad_clip", self.optim.grad_clip, 0, math.inf, lo_open=True),
            _span("optim.warmup_steps", self.optim.warmup_steps, 0, MAX_STEPS),
            _span("optim.micro_batch", self.optim.micro_batch, 1, MAX_PROMPTS_PER_STEP * MAX_GROUP_SIZE),
            _span("optim.micro_batch_tokens", self.optim.micro_batch_tokens, 0, 2 ** 40),
            _span("optim.mini_batch_prompts", self.optim.mini_batch_prompts, 0, MAX_PROMPTS_PER_STEP),
            ("optim.mini_batch_prompts", not _finite(self.optim.mini_batch_prompts) or
             self.optim.mini_batch_prompts == 0 or self.rollout.prompts_per_step % self.optim.mini_batch_prompts == 0,
             f"must divide rollout.prompts_per_step={self.rollout.prompts_per_step} (whole mini-batches of groups)"),
            _span("optim.epochs", self.optim.epochs, 1, 1000),
            _span("run.steps", self.run.steps, 1, MAX_STEPS),
            _span("run.eval_every", self.run.eval_every, 0, MAX_STEPS),
            _span("run.eval_samples", self.run.eval_samples, 1, MAX_GROUP_SIZE),
            _span("run.save_every", self.run.save_every, 0, MAX_STEPS),
            _span("run.record_groups", self.run.record_groups, 0, MAX_RECORD_GROUPS),
            _span("run.record_cache_mb", self.run.record_cache_mb, 1, 1 << 20),
            _span("run.max_resample", self.run.max_resample, 0, 100),
            _span("data.n_train", self.data.n_train, 1, MAX_ROWS),
            _span("data.n_val", self.data.n_val, 1, MAX_ROWS),
            ("run.report_to", self.run.report_to in ("", *TRACKERS), f"must be '' or one of {sorted(TRACKERS)}"),
            ("run.report_to", missing_package(self.run.report_to) is None,
             f"needs the {missing_package(self.run.report_to)!r} package, which is not installed "
             f"(pip install {missing_package(self.run.report_to)})"),
            ("data.digits", len(self.data.digits) == 2 and all(1 <= d <= 9 for d in self.data.digits),
             "must be two digit counts in 1..9"),
            ("data.task", self.data.task in TASKS, f"must be one of {sorted(TASKS)}"),
            ("data.context", self.data.context in CONTEXTS, f"must be one of {sorted(CONTEXTS)}"),
            ("data.digits", self.data.task not in TASKS or TASKS[self.data.task].difficulty is not None
             or tuple(self.data.digits) == DataConfig.digits,
             f"applies to {' or '.join(f'data.task={t!r}' for t in tasks_with_difficulty())} only "
             f"(task {self.data.task!r} has a fixed difficulty)"),
            ("rollout.max_new_tokens", not self._embedded() or self.rollout.max_new_tokens >= self._task_tokens(),
             f"is too short for data.task={self.data.task!r}: its answers take up to {self._task_tokens()} tokens"),
        ]
        for name, ok, why in checks:
            if not ok:
                value = operator.attrgetter(name)(self)
                raise ValueError(f"config {name}={value!r} is invalid: {why} (set by --{name})")
        return self

    def _embedded(self) -> bool:
        return "embedded" in (self.data.train, self.data.val) and self.data.task in TASKS

    def _task_tokens(self) -> int:
        """Longest taught response of the embedded task (0 for an unknown task, refused by its own check)."""
        if self.data.task not in TASKS:
            return 0
        return get_task(self.data.task, self.data.digits).response_tokens


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _span(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
          ) -> tuple[str, bool, str]:
    """A validate() check that `value` is a finite number in the interval lo..hi (inf: unbounded)."""
    ok = _finite(value) and (lo < value if lo_open else lo <= value) and (value < hi if hi_open else value <= hi)
    interval = f"{'(' if lo_open else '['}{_number(lo)}, {_number(hi)}{')' if hi_open or hi == math.inf else ']'}"
    return name, ok, f"must be a finite number in {interval}"


def _number(x: float) -> str:
    return str(int(x)) if math.isfinite(x) and x == int(x) else f"{x:g}"


def micro_rows(optim: OptimConfig, response_tokens: int) -> int:
    """Sequences per forward/backward pass for responses padded to `response_tokens`: at most `micro_batch`, and
    at most `micro_batch_tokens` response tokens (0 = no limit), at least one."""
    if not optim.micro_batch_tokens:
        return optim.micro_batch
    return max(1, min(optim.micro_batch, optim.micro_batch_tokens // max(1, response_tokens)))


def preset(name: str) -> TrainConfig:
    """Named settings (one of PRESETS): "cpu" (embedded task defaults) or "paper" (SPEC.md reference settings,
    Qwen3-4B)."""
    if name == "cpu":
        return TrainConfig()
    if name == "paper":
        cfg = TrainConfig()
        # verl's FSDP bf16 is mixed precision: float32 master weights and AdamW state, bf16 compute. bf16
        # weights would round away most updates at lr 1e-6.
        cfg.model = ModelConfig(name="Qwen/Qwen3-4B", dtype="float32", autocast=True, gradient_checkpointing=True,
                                enable_thinking=True)
        cfg.rollout = RolloutConfig(engine="vllm", prompts_per_step=128, group_size=8, temperature=1.0,
                                    max_new_tokens=4096, max_prompt_tokens=2048)
        cfg.loss = LossConfig(method="sdpg", beta=1e-3, alpha=1e-3, ref_mode="urkl", gate=True,
                              beta_warmup=50, beta_decay=350, clip_low=0.2, clip_high=0.2, clip_c=10.0)
        # the authors' script: ppo_mini_batch_size 16 -> 8 AdamW updates per 128-prompt step
        cfg.optim = OptimConfig(lr=1e-6, betas=(0.9, 0.999), weight_decay=0.1, grad_clip=1.0,
                                warmup_steps=10, mini_batch_prompts=16, micro_batch=8, micro_batch_tokens=0)
        cfg.run = RunConfig(steps=400, eval_every=25, eval_samples=32, save_every=50)
        return cfg
    raise ValueError(f"unknown preset {name!r}; known: {PRESETS}")


def config_file_problems(data) -> tuple[dict, list[str]]:
    """A config read back from a run's file, as (the sections and fields a view can use, what was left out).

    A field whose value is not of its `TrainConfig` default's kind (number, text, flag, list) is left out;
    fields `TrainConfig` does not know are kept as they are (older or newer runs)."""
    if not isinstance(data, dict):
        return {}, [f"not a config (expected a JSON object of sections, got {type(data).__name__})"]
    defaults, kept, problems = TrainConfig().to_dict(), {}, []
    for section, fields in data.items():
        if not isinstance(fields, dict):
            problems.append(f"section {section!r} is {type(fields).__name__}, not an object of settings")
            continue
        kept[section] = {}
        for name, value in fields.items():
            want = defaults.get(section, {}).get(name)
            if want is not None and _kind(value) != _kind(want) and not (value is None and _kind(want) == "number"):
                problems.append(f"{section}.{name} is {str(value)[:40]!r}, not a {_kind(want)}")
                continue
            kept[section][name] = value
    return kept, problems


def _kind(value) -> str:
    if isinstance(value, bool):
        return "flag (true/false)"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", tuple: "list", dict: "object"}.get(type(value), type(value).__name__)
