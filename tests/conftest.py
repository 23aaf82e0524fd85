"""Shared fixtures: a tiny random Qwen3 with the embedded tokenizer, saved like any real checkpoint."""
import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from sdpg.config import TrainConfig  # noqa: E402
from sdpg.embedded.model import TinyModelConfig, build_tiny_model  # noqa: E402
from sdpg.embedded.tokenizer import build_char_tokenizer  # noqa: E402
from sdpg.methods import check_config  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer random Qwen3 + char tokenizer in `save_pretrained` format (no warm start: fast)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def save_tiny_model(path):
    """Build the tiny model (seeded) and save it with its tokenizer to `path`."""
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                                        head_dim=32, intermediate_size=128))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_config(model_dir, run_dir, **overrides) -> TrainConfig:
    """A config that runs a real training step in about a second on the tiny model."""
    cfg = TrainConfig()
    cfg.model.name = str(model_dir)
    cfg.data.digits = (1, 1)
    cfg.data.n_train, cfg.data.n_val = 40, 6
    cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens = 3, 4, 10
    cfg.optim.micro_batch = 5
    cfg.run.steps, cfg.run.eval_every, cfg.run.eval_samples, cfg.run.save_every = 3, 0, 2, 0
    cfg.run.run_dir = str(run_dir)
    cfg.reward.timeout_s = 10.0
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return check_config(cfg)
