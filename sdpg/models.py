"""Loading the policy model and its tokenizer: the embedded tiny Qwen3 or any causal-LM checkpoint.

Design choices:
- One code path for all models: the embedded model (`sdpg.embedded`) is a real `Qwen3ForCausalLM` saved with
  `save_pretrained` and loaded with `from_pretrained`, next to a tokenizer with a chat template, so
  the trainer never branches on which model it has.
- Tokenizers pad on the left so every prompt ends where generation starts; a missing pad token falls
  back to EOS.
- Loading failures name the model id or path; a path that does not exist fails before any hub call.
- A hub id honours offline mode (`HF_HUB_OFFLINE`) and a hub that cannot be reached is found by one
  short probe, so the run loads from the local HF cache or fails at once instead of retrying for a minute.
- Loads in one process happen one at a time (`_LOADING`): runs trained side by side in threads load safely.
"""
from __future__ import annotations

import copy
import os
import threading
from pathlib import Path
from typing import Callable

import huggingface_hub
import torch
from huggingface_hub.utils import get_session
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sdpg.config import DTYPES, DataConfig, ModelConfig
from sdpg.embedded.cache import embedded_entry, embedded_settings
from sdpg.embedded.warmstart import WarmStartConfig

EMBEDDED = "embedded"
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}
HUB_PROBE_S = 5.0
_LOADING = threading.Lock()
"""one `from_pretrained` at a time per process: its meta-device initialisation is not thread-safe (two runs of a
race loading at once crashed with 'Cannot copy out of meta tensor')"""
"""seconds the hub reachability probe waits before a hub id is taken from the local cache or refused"""


class ModelLoadError(OSError):
    """A model or tokenizer could not be loaded; the message names the id or path."""


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
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"model.device={name!r} does not exist: torch sees {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1} (set by --model.device)")
    return device


def load_model_and_tokenizer(cfg: ModelConfig, *, device: str | torch.device = "cpu",
                             cache_dir: str | Path | None = None, data_cfg: DataConfig | None = None,
                             progress: bool = True, warm_cfg: WarmStartConfig | None = None,
                             on_warmstart: Callable[[dict], None] | None = None
                             ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer `cfg.name` names, on `device`, in `cfg.dtype`.

    "embedded" loads the warm-started tiny model from the cache, building it first when absent (its
    task digits follow `data_cfg.digits` when given, else `warm_cfg`'s). Anything else is an HF model
    id or a local `save_pretrained` directory. `on_warmstart` follows the embedded warm start (see `embedded_entry`).
    """
    if cfg.dtype not in TORCH_DTYPES:
        raise ValueError(f"model.dtype={cfg.dtype!r} is invalid: must be one of {sorted(TORCH_DTYPES)}")
    source = cfg.name
    if cfg.name == EMBEDDED:
        source = str(embedded_entry(cache_dir=cache_dir, warm_cfg=embedded_settings(warm_cfg, data_cfg),
                                    progress=progress, on_warmstart=on_warmstart))
    with _LOADING:
        model, tokenizer = _from_pretrained(source, TORCH_DTYPES[cfg.dtype], cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model.to(device), tokenizer


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or os.path.isabs(name) or os.path.exists(name)


def hub_kwargs(name: str) -> dict:
    """Extra `from_pretrained` arguments for `name`: {} for a local folder or a reachable hub, local files only
    when offline or the hub is unreachable but the id is cached; ModelLoadError when it cannot load at all."""
    if _looks_like_path(name):
        return {}
    cached = isinstance(huggingface_hub.try_to_load_from_cache(name, "config.json"), str)
    if huggingface_hub.is_offline_mode():
        if cached:
            return {"local_files_only": True}
        raise ModelLoadError(f"cannot load model {name!r}: offline mode is on (HF_HUB_OFFLINE) and it is not in "
                             f"the local HF cache; download it first or give a local save_pretrained folder")
    endpoint = huggingface_hub.constants.ENDPOINT
    try:
        get_session().head(endpoint, timeout=HUB_PROBE_S)
    except Exception as err:  # any failure to connect means the downloads would only retry
        if cached:
            return {"local_files_only": True}
        raise ModelLoadError(f"cannot load model {name!r}: the hub ({endpoint}) cannot be reached "
                             f"({type(err).__name__}: {err}) and the model is not in the local HF cache; give a "
                             f"local save_pretrained folder, or set HF_HUB_OFFLINE=1 to use cached models only"
                             ) from None
    return {}


def _from_pretrained(name: str, dtype: torch.dtype, trust_remote_code: bool
                     ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if _looks_like_path(name) and not Path(name).expanduser().is_dir():
        raise ModelLoadError(f"cannot load model {name!r}: no such directory (expected a save_pretrained folder)")
    path_or_id = str(Path(name).expanduser()) if _looks_like_path(name) else name
    hub = hub_kwargs(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code, **hub)
        model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **hub)
    except (OSError, ValueError, KeyError, ImportError) as err:
        raise ModelLoadError(
            f"cannot load model {name!r}: {err}\n(an HF id needs hub access or a local HF cache; "
            f"a local path must be a save_pretrained folder with model and tokenizer files)"
        ) from err
    return model, tokenizer
