"""Loading the policy model and its tokenizer: the embedded tiny Qwen3 or any causal-LM checkpoint.

Design choices:
- One code path for all models: the embedded model is a real `Qwen3ForCausalLM` saved with
  `save_pretrained` and loaded with `from_pretrained`, next to a tokenizer with a chat template, so
  the trainer never branches on which model it has.
- The embedded tokenizer is character-level and built offline (WordLevel over single characters):
  every character is one token, which keeps the vocabulary tiny and the full-vocabulary KL exact and
  cheap. Its chat template renders a user message as its raw text and the generation cue as "A:".
- Tokenizers pad on the left so every prompt ends where generation starts; a missing pad token falls
  back to EOS.
- The embedded model is warm-started once per settings and cached under `$SDPG_CACHE` (default
  `~/.cache/sdpg-lab`), keyed by a hash of everything that shapes it. An entry is built in a temporary
  folder and renamed into place, so a crash never leaves a half-written entry behind.
- Loading failures name the model id or path; a path that does not exist fails before any hub call.
"""
from __future__ import annotations

import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM)

from sdpg.config import DataConfig, ModelConfig
from sdpg.tasks import CONTEXTS, get_task

if TYPE_CHECKING:
    from sdpg.warmstart import WarmStartConfig

EMBEDDED = "embedded"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARS = "0123456789 \n:+-*/=(){}\\.,?abcdefghijklmnopqrstuvwxyzAHQ"
"""every character the embedded tokenizer knows; anything else encodes as UNK"""
ANSWER_CUE = "A:"
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}" + ANSWER_CUE + "{{ message['content'] }}{{ eos_token }}"
    "{%- else -%}{{ message['content'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}" + ANSWER_CUE + "{%- endif -%}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
WARMSTART_FILE = "warmstart.json"


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message names the id or path."""


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of the embedded Qwen3 model (vocabulary size comes from the tokenizer)."""

    hidden_size: int = 128
    """width of the residual stream (H)"""
    num_layers: int = 4
    """transformer blocks"""
    num_heads: int = 4
    """query heads per block"""
    num_kv_heads: int = 2
    """key/value heads per block (grouped-query attention)"""
    head_dim: int = 32
    """width of one attention head"""
    intermediate_size: int = 384
    """width of the SwiGLU MLP"""
    max_positions: int = 256
    """longest sequence in tokens (prompt + response)"""


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """The embedded character-level tokenizer: ids 0..2 are pad, eos, unk; then one id per character."""
    vocab = {token: i for i, token in enumerate([PAD, EOS, UNK, *CHARS])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                        padding_side="left")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, spec: TinyModelConfig) -> Qwen3ForCausalLM:
    """A freshly initialised tiny Qwen3 (draws from torch's global RNG: seed before calling)."""
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers, num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads, head_dim=spec.head_dim,
        max_position_embeddings=spec.max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    model = Qwen3ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def render_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], *, enable_thinking: bool = False) -> list[str]:
    """Each text as a single user message through the chat template, ready for generation.

    A tokenizer without a chat template gets the raw texts. `enable_thinking` reaches templates that
    read it (Qwen3's), and is left out for the others.
    """
    template = tokenizer.chat_template
    if not template:
        return list(texts)
    extra = {"enable_thinking": enable_thinking} if "enable_thinking" in str(template) else {}
    if not texts:
        return []
    conversations = [[{"role": "user", "content": text}] for text in texts]
    return tokenizer.apply_chat_template(conversations, tokenize=False, add_generation_prompt=True, **extra)


def make_reference(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen copy of `model` (eval mode, no gradients) to anchor the policy to."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def resolve_device(name: str) -> torch.device:
    """The device `ModelConfig.device` names; "auto" is the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"model.device={name!r} but torch sees no CUDA device (torch {torch.__version__})")
    return torch.device(name)


def default_cache_dir() -> Path:
    """`$SDPG_CACHE`, else `~/.cache/sdpg-lab`."""
    return Path(os.environ.get("SDPG_CACHE") or Path.home() / ".cache" / "sdpg-lab")


def load_model_and_tokenizer(cfg: ModelConfig, *, device: str | torch.device = "cpu",
                             cache_dir: str | Path | None = None, data_cfg: DataConfig | None = None,
                             progress: bool = True, warm_cfg: WarmStartConfig | None = None
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer `cfg.name` names, on `device`, in `cfg.dtype`.

    "embedded" loads the warm-started tiny model from the cache, building it first when absent (its
    task digits follow `data_cfg.digits` when given, else `warm_cfg`'s). Anything else is an HF model
    id or a local `save_pretrained` directory.
    """
    if cfg.dtype not in DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is invalid: must be one of {sorted(DTYPES)}")
    source = cfg.name
    if cfg.name == EMBEDDED:
        source = str(embedded_entry(cache_dir=cache_dir, warm_cfg=embedded_settings(warm_cfg, data_cfg),
                                    progress=progress))
    model, tokenizer = _from_pretrained(source, DTYPES[cfg.dtype], cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(device), tokenizer


def embedded_entry(*, cache_dir: str | Path | None = None, warm_cfg: WarmStartConfig | None = None,
                   progress: bool = True) -> Path:
    """The cache folder of the embedded model for `warm_cfg`, warm-starting and saving it if absent.

    The folder holds the model, the tokenizer and `warmstart.json` (settings, held-out pass rates,
    wall time).
    """
    from sdpg.warmstart import WarmStartConfig  # warmstart builds on this module's tokenizer and model

    warm_cfg = warm_cfg or WarmStartConfig()
    entry = Path(cache_dir or default_cache_dir()) / f"embedded-{embedded_key(warm_cfg)}"
    if (entry / WARMSTART_FILE).is_file():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    # One builder per entry: a second process (the dashboard and a notebook started together) waits for
    # the first instead of spending the same minutes; the OS drops the lock if the builder dies.
    with open(entry.parent / f".{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (entry / WARMSTART_FILE).is_file():
            _build_entry(entry, warm_cfg, progress)
    return entry


def embedded_key(warm_cfg: WarmStartConfig) -> str:
    """Hash of everything that shapes the embedded model: warm-start settings (model shape, task, digits
    and seed included), the tokenizer's characters and template, and the task's text format."""
    task = get_task(warm_cfg.task, warm_cfg.digits if warm_cfg.task == "add" else None)
    sample = task.problems(1, seed=0, split="val")[0]
    settings = dataclasses.asdict(warm_cfg)
    del settings["task"]
    fingerprint = {
        "warm_start": settings,
        "chars": CHARS,
        "chat_template": CHAT_TEMPLATE,
        "sample": [sample.question + CONTEXTS["full"](sample), sample.answer],
    }
    if task.name != "add":  # entries made before there were other tasks keep their key
        fingerprint["task"] = {"name": task.name, "response": sample.response, "contexts": task.warm_contexts}
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def read_warmstart_report(entry: str | Path) -> dict:
    """The `warmstart.json` record of an embedded cache entry."""
    return json.loads((Path(entry) / WARMSTART_FILE).read_text())


def embedded_settings(warm_cfg: WarmStartConfig | None, data_cfg: DataConfig | None) -> WarmStartConfig:
    """The warm-start settings for a run: `warm_cfg` (when None: the defaults with the task's own warm-start
    settings) with the task and digits of `data_cfg` when given."""
    from sdpg.warmstart import WarmStartConfig  # warmstart builds on this module's tokenizer and model

    name = data_cfg.task if data_cfg is not None else (warm_cfg.task if warm_cfg else "add")
    warm_cfg = warm_cfg or WarmStartConfig(**get_task(name).warm_start)
    if data_cfg is not None:
        warm_cfg = dataclasses.replace(warm_cfg, task=data_cfg.task, digits=tuple(data_cfg.digits))
    return warm_cfg


def _build_entry(entry: Path, warm_cfg: WarmStartConfig, progress: bool) -> None:
    from sdpg.warmstart import warm_start  # warmstart builds on this module's tokenizer and model

    for stale in entry.parent.glob(f".{entry.name}-*"):  # staging left by a builder that was killed
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
    try:
        model, tokenizer, report = warm_start(warm_cfg, progress=progress)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        # Written last: its presence marks a complete entry.
        (staging / WARMSTART_FILE).write_text(json.dumps(report, indent=2))
        try:
            staging.rename(entry)
        except OSError:
            # Another process finished the same entry first; it is equally valid, keep it.
            if not (entry / WARMSTART_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isabs(name) or os.path.exists(name)


def _from_pretrained(name: str, dtype: torch.dtype, trust_remote_code: bool
                     ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"cannot load model {name!r}: no such directory (expected a save_pretrained folder)")
    path_or_id = str(Path(name).expanduser()) if _looks_like_path(name) else name
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise ModelLoadError(
            f"cannot load model {name!r}: {err}\n(an HF id needs hub access or a local HF cache; "
            f"a local path must be a save_pretrained folder with model and tokenizer files)"
        ) from err
    return model, tokenizer
