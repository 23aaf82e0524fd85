import json

import pytest

from sdpg.cli import build_parser, config_from_args, field_docs
from sdpg.config import TrainConfig, preset
from sdpg.methods import check_config


def test_defaults_validate_and_round_trip_through_json():
    cfg = TrainConfig().validate()
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert isinstance(again.data.digits, tuple)


def test_paper_preset_has_the_reference_settings():
    cfg = preset("paper").validate()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.warmup_steps) == (1e-6, 0.1, 10)
    assert (cfg.loss.alpha, cfg.loss.beta, cfg.loss.beta_warmup, cfg.loss.beta_decay) == (1e-3, 1e-3, 50, 350)
    assert (cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens) == (128, 8, 4096)
    assert cfg.run.steps == 400 and cfg.loss.ref_mode == "urkl" and cfg.loss.gate
    assert cfg.model.enable_thinking and cfg.loss.kl_clamp == 20.0  # as the authors' script and fork


@pytest.mark.parametrize("section,name,value,needle", [
    ("loss", "method", "ppo", "loss.method='ppo'"),
    ("loss", "ref_mode", "kl", "loss.ref_mode='kl'"),
    ("loss", "beta", -1.0, "loss.beta=-1.0"),
    ("rollout", "temperature", 0.0, "rollout.temperature=0.0"),
    ("rollout", "group_size", 0, "rollout.group_size=0"),
    ("optim", "lr", 0.0, "optim.lr=0.0"),
    ("loss", "kl_clamp", -1.0, "loss.kl_clamp=-1.0 is invalid: must be >= 0 (--loss.kl_clamp 0 turns"),
    ("loss", "opsd_teacher_temperature", 0.0, "loss.opsd_teacher_temperature=0.0"),
    ("reward", "scale", "pm2", "reward.scale='pm2' is invalid: must be one of ('01', 'pm1'"),
])
def test_invalid_values_name_the_field(section, name, value, needle):
    cfg = TrainConfig()
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        check_config(cfg)


def test_unknown_keys_are_an_error():
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_dict({"loss": {"betta": 1.0}})


def test_every_field_has_a_docstring_and_a_flag():
    parser = build_parser()
    dests = {a.dest for a in parser._actions}
    for section, sub in TrainConfig().to_dict().items():
        docs = field_docs(type(getattr(TrainConfig(), section)))
        for name in sub:
            assert docs.get(name), f"{section}.{name} has no docstring"
            assert f"{section}.{name}" in dests


def test_cli_flags_override_and_aliases():
    args = build_parser().parse_args(["--method", "grpo", "--loss.beta", "0.5", "--no-loss.gate",
                                      "--data.digits", "2", "3", "--loss.clip_c", "none", "--steps", "7"])
    cfg = config_from_args(args)
    assert cfg.loss.method == "grpo" and cfg.loss.beta == 0.5 and cfg.loss.gate is False
    assert cfg.data.digits == (2, 3) and cfg.loss.clip_c is None and cfg.run.steps == 7
    assert TrainConfig().loss.gate is True  # defaults untouched
