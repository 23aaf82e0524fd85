"""Mini-batch updates and recomputed old log-probs on the tiny model: update counts, ratios, clipping, the gap
between sampler and trainer log-probs, per-step schedules, and the errors for bad settings."""
import json

import pytest
import torch

from conftest import tiny_config
from sdpg import trainer as trainer_mod
from sdpg.forward import lm_head_weight, response_hidden, token_logp
from sdpg.records import RecordStream
from sdpg.run import build_trainer
from sdpg.train import main as cli_main


def make(tiny_model_dir, tmp_path, **overrides):
    # the random model solves nothing: the overlong penalty spreads rewards so advantages are not all 0
    cfg = tiny_config(tiny_model_dir, tmp_path, reward__overlong_buffer=6, **overrides)
    return build_trainer(cfg, RecordStream(tmp_path), progress=False)


def spy_micro_steps(monkeypatch) -> list:
    """Record (old log-probs given?, stats) of every micro-step the trainer runs."""
    seen, real = [], trainer_mod.micro_step

    def spy(fw, mb, ctx):
        result = real(fw, mb, ctx)
        seen.append((mb.old_logp is None, result.stats))
        return result

    monkeypatch.setattr(trainer_mod, "micro_step", spy)
    return seen


def test_mini_batches_give_one_adamw_update_each_per_epoch(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, optim__mini_batch_prompts=1, optim__epochs=2, run__steps=2)
    try:
        metrics = [trainer.train_step() for _ in range(2)]
    finally:
        trainer.verifier.close()
    steps = {int(state["step"]) for state in trainer.optimizer.state.values()}
    assert steps == {2 * 3 * 2}  # 2 training steps x 3 mini-batches (3 prompts / 1) x 2 epochs
    assert [m["optim/updates"] for m in metrics] == [6.0, 6.0]
    assert trainer.scheduler.last_epoch == 2  # the learning-rate schedule counts training steps
    assert metrics[0]["grad/norm_max"] >= metrics[0]["grad/norm"] > 0


def test_the_first_ratio_is_exactly_one_and_later_ones_move(tiny_model_dir, tmp_path, monkeypatch):
    seen = spy_micro_steps(monkeypatch)
    trainer = make(tiny_model_dir, tmp_path, optim__mini_batch_prompts=1, optim__micro_batch=64, optim__lr=1e-2)
    try:
        trainer.train_step()
    finally:
        trainer.verifier.close()
    assert [own for own, _ in seen] == [True, False, False]  # the first update reads its own log-probs
    first, *later = [stats for _, stats in seen]
    assert first["kl/approx_old"] == 0.0 and first["loss/clipfrac_high"] == first["loss/clipfrac_low"] == 0.0
    assert all(stats["kl/approx_old"] != 0.0 for stats in later)  # weights moved since the old log-probs


def test_clipping_happens_once_updates_move_the_policy(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, optim__mini_batch_prompts=1, optim__epochs=3, optim__lr=5e-2,
                   loss__clip_low=0.05, loss__clip_high=0.05)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    assert metrics["optim/updates"] == 9.0
    assert metrics["loss/clipfrac_high"] + metrics["loss/clipfrac_low"] > 0
    assert metrics["kl/approx_old"] != 0.0


def test_recomputed_old_logp_is_the_current_models_and_the_fp32_gap_is_tiny(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, optim__mini_batch_prompts=1)
    try:
        batch = trainer.sample_batch()
        ro = batch.rollout
        with torch.no_grad():
            h = response_hidden(trainer.model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)
            current = token_logp(h, lm_head_weight(trainer.model), ro.response_ids,
                                 temperature=trainer.cfg.rollout.temperature) * ro.response_mask  # (B, T)
        later = slice(ro.group_size, None)  # the first update's rows are written by that update itself
        torch.testing.assert_close(batch.old_logp[later], current[later], rtol=0, atol=1e-5)
        assert not torch.equal(batch.old_logp, ro.old_logp)  # recomputed, not the sampler's
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    assert 0 <= metrics["rollout/logp_gap_mean"] <= metrics["rollout/logp_gap_max"] < 1e-4


def test_autocast_opens_a_gap_between_sampler_and_trainer_and_it_is_reported(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, model__autocast=True)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    assert metrics["rollout/logp_gap_max"] > 1e-3  # HF samples in float32, the update runs in bfloat16
    assert metrics["kl/approx_old"] == 0.0  # the ratio still starts at exactly 1


def test_without_recomputation_the_sampler_log_probs_are_the_old_ones(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, rollout__recompute_old_logp=False)
    try:
        batch = trainer.sample_batch()
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    assert batch.old_logp is batch.rollout.old_logp
    assert "rollout/logp_gap_mean" not in metrics


def test_beta_and_learning_rate_advance_per_training_step_not_per_update(tiny_model_dir, tmp_path):
    trainer = make(tiny_model_dir, tmp_path, optim__mini_batch_prompts=1, optim__warmup_steps=2, loss__beta_warmup=2,
                   run__steps=2)
    try:
        metrics = [trainer.train_step() for _ in range(2)]
    finally:
        trainer.verifier.close()
    lr, beta = trainer.cfg.optim.lr, trainer.cfg.loss.beta
    # training steps count from 1 (verl): step 1 runs at lr 0 and beta / T_warm, step 2 at lr / 2 and beta
    assert [m["optim/lr"] for m in metrics] == pytest.approx([0.0, lr / 2])
    assert [m["beta/effective"] for m in metrics] == pytest.approx([beta / 2, beta])


@pytest.mark.parametrize("flags, needle", [
    (["--optim.mini_batch_prompts", "2"],
     "optim.mini_batch_prompts=2 is invalid: must divide rollout.prompts_per_step=3"),
    (["--optim.mini_batch_prompts", "-1"], "optim.mini_batch_prompts=-1 is invalid: must be a finite number in [0, 16384]"),
    (["--optim.epochs", "0"], "optim.epochs=0 is invalid: must be a finite number in [1, 1000]"),
])
def test_bad_mini_batch_settings_are_refused_naming_the_flag(tiny_model_dir, tmp_path, capsys, flags, needle):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps(tiny_config(tiny_model_dir, tmp_path).to_dict()))
    assert cli_main(["--config", str(config), "--quiet", *flags]) == 2
    assert needle in capsys.readouterr().err
