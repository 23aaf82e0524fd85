"""Memory: the planner on real Qwen3 shapes, and the memory levers of a run on a tiny model (token-budget
micro-batches, gradient checkpointing, bf16 autocast, the materialised vs fused KL, untied LM heads), plus
the CPU dry run of bench/gpu_check.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Qwen3Config

from conftest import tiny_config
from sdpg.config import TrainConfig, preset
from sdpg.embedded.model import TinyModelConfig, build_tiny_model
from sdpg.embedded.tokenizer import build_char_tokenizer
from sdpg.forward import lm_head_weight
from sdpg.memory import GIB, MemoryPlanError, ModelShape, check_memory, main as memory_main, plan_memory
from sdpg.models import resolve_device
from sdpg.records import RecordStream
from sdpg.run import build_trainer

ROOT = Path(__file__).resolve().parents[1]
QWEN3 = {  # the architectures of Qwen3-0.6B / 1.7B / 4B (their config.json), built here without a download
    "0.6B": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16),
    "1.7B": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16),
    "4B": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32),
}


def qwen3_config(size: str) -> Qwen3Config:
    return Qwen3Config(vocab_size=151936, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                       **QWEN3[size])


@pytest.fixture(scope="module")
def shapes():
    return {size: ModelShape.from_config(qwen3_config(size)) for size in QWEN3}


def long_run(size: str, new_tokens: int = 6144, prompt_tokens: int = 2048) -> TrainConfig:
    """The paper's settings (gradient checkpointing, 8 sequences per micro-batch, vLLM rollouts) with
    bfloat16 weights, the leanest single-GPU setting (the preset keeps float32 master weights)."""
    cfg = preset("paper")
    cfg.model.dtype, cfg.model.autocast = "bfloat16", False
    cfg.model.name = f"Qwen3-{size}"
    cfg.rollout.engine = "vllm"
    cfg.rollout.max_new_tokens, cfg.rollout.max_prompt_tokens = new_tokens, prompt_tokens
    return cfg.validate()


def test_parameter_counts_are_exact(shapes):
    assert [round(shapes[s].params / 1e6) for s in QWEN3] == [596, 1721, 4022]  # published: 0.6B, 1.7B, 4.0B
    tokenizer = build_char_tokenizer()
    tiny = build_tiny_model(tokenizer, TinyModelConfig())
    assert ModelShape.from_config(tiny.config).params == sum(p.numel() for p in tiny.parameters())


def test_qwen3_0_6b_at_8k_tokens_fits_on_80_gib(shapes):
    plan = check_memory(long_run("0.6B"), shapes["0.6B"], 80 * GIB)
    assert plan.fits and plan.micro_tokens == 8 * 8192
    update = plan.update
    assert update["weights"] == update["gradients"] == update["reference model"] == 596_049_920 * 2
    assert update["AdamW state (2 moments)"] == 2 * update["weights"]
    assert "vLLM share (awake)" in plan.rollout and "vLLM (asleep)" in update


def test_qwen3_4b_at_8k_tokens_is_refused_on_24_gib_with_the_largest_model_that_fits(shapes):
    with pytest.raises(MemoryPlanError) as err:
        check_memory(long_run("4B"), shapes["4B"], 24 * GIB)
    message = str(err.value)
    assert "Qwen3-4B will not fit: the update phase needs" in message
    assert "Suggested: a smaller model" in message and "at most ~2.2B parameters" in message
    assert "--no-run.memory_check tries anyway" in message and "activations" in message


def test_a_refusal_suggests_a_micro_batch_budget_that_really_fits(shapes):
    cfg = long_run("1.7B")
    with pytest.raises(MemoryPlanError, match=r"Suggested: --optim.micro_batch_tokens 8192\n"):
        check_memory(cfg, shapes["1.7B"], 24 * GIB)
    cfg.optim.micro_batch_tokens = 8192
    assert check_memory(cfg, shapes["1.7B"], 24 * GIB).fits


def test_without_checkpointing_or_the_fused_kl_the_refusal_names_the_lever(shapes):
    cfg = long_run("0.6B", new_tokens=30720)
    cfg.model.gradient_checkpointing = False
    with pytest.raises(MemoryPlanError, match=r"Suggested: --model.gradient_checkpointing --optim.micro_batch_tokens"):
        check_memory(cfg, shapes["0.6B"], 24 * GIB)
    cfg.model.gradient_checkpointing, cfg.loss.fused_kl = True, False
    with pytest.raises(MemoryPlanError, match=r"Suggested: --loss.fused_kl --optim.micro_batch_tokens 30720"):
        check_memory(cfg, shapes["0.6B"], 24 * GIB)


def test_the_plain_kl_path_grows_with_tokens_and_the_fused_one_does_not(shapes):
    small, big = long_run("0.6B", new_tokens=1024), long_run("0.6B", new_tokens=8192)
    for cfg in (small, big):
        cfg.optim.micro_batch = 1
    fused = [plan_memory(c, shapes["0.6B"], 80 * GIB).update["KL workspace"] for c in (small, big)]
    for cfg in (small, big):
        cfg.loss.fused_kl = False
    plain = [plan_memory(c, shapes["0.6B"], 80 * GIB).update["KL workspace"] for c in (small, big)]
    assert fused[0] == fused[1] < plain[0] < plain[1]
    assert plain[1] == 6 * 8192 * 151936 * 4  # six float32 (N, V) tensors


def test_memory_cli_prints_the_plan_and_refuses_with_exit_1(tmp_path, capsys):
    qwen3_config("4B").save_pretrained(tmp_path)  # a config.json is all the planner reads
    flags = ["--model", str(tmp_path), "--preset", "paper", "--model.dtype", "bfloat16", "--no-model.autocast"]
    assert memory_main([*flags, "--device-gib", "80"]) == 0
    out = capsys.readouterr().out
    assert "4.022B parameters" in out and "update phase" in out and out.strip().endswith("fits")
    assert memory_main([*flags, "--device-gib", "24"]) == 1
    assert "refused:" in capsys.readouterr().out


def test_hf_generate_at_paper_lengths_is_refused_in_favour_of_vllm(shapes):
    cfg = long_run("4B")
    cfg.rollout.engine = "hf"  # generate's KV cache: 128 x 8 sequences x 6144 positions x 36 layers
    with pytest.raises(MemoryPlanError, match=r"the rollout phase needs .*HF generate KV cache.*\n"
                                              r"Suggested: --rollout.engine vllm\n"):
        check_memory(cfg, shapes["4B"], 80 * GIB)


# ---------------------------------------------------------------- the levers, on a tiny model

def one_step(model_dir, run_dir, setup=lambda trainer: None, **overrides):
    """Weights and metrics after one training step (same seed, hence the same rollouts, for every setting);
    `setup(trainer)` runs before the step."""
    trainer = build_trainer(tiny_config(model_dir, run_dir, loss__gate=False, loss__beta=0.5, **overrides),
                            RecordStream(run_dir), progress=False)
    setup(trainer)
    metrics = trainer.train_step()
    trainer.verifier.close()
    return trainer, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, metrics


ROUNDING = 1e-5
"""weight tolerance after one step (lr 1e-4) of two float paths that differ only in rounding: AdamW's first update
divides by |g|, so an element whose gradient is near zero carries the rounding of the gradient into the weight"""


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def test_a_token_budget_sets_the_micro_batch_and_accumulation_stays_exact(tiny_model_dir, tmp_path):
    whole, w_whole, m_whole = one_step(tiny_model_dir, tmp_path / "a", optim__micro_batch=64, optim__micro_batch_tokens=0)
    budget, w_budget, m_budget = one_step(tiny_model_dir, tmp_path / "b", optim__micro_batch_tokens=40)
    def widths(trainer, response_tokens):
        return [sl.stop - sl.start for sl in trainer._micro_slices(slice(0, 128), response_tokens)]
    assert set(widths(budget, 20)) == {2} and set(widths(budget, 50)) == {1} and widths(whole, 50) == [64, 64]
    whole.cfg.optim.micro_batch_tokens = 1024  # the default: both limits hold, the tighter one decides
    assert widths(whole, 16) == [64, 64] and set(widths(whole, 64)) == {16}
    assert m_whole["adv/values"] == m_budget["adv/values"]  # the same rollouts
    assert abs(m_whole["loss/total"] - m_budget["loss/total"]) < 1e-6
    assert_same_weights(w_whole, w_budget, atol=1e-6)


def test_gradient_checkpointing_is_on_in_the_student_forward_and_gives_the_same_step(tiny_model_dir, tmp_path):
    calls = []

    def count_checkpointed_calls(trainer):
        layer = trainer.model.model.layers[0]
        wrapped = layer._gradient_checkpointing_func  # set by gradient_checkpointing_enable

        def counting(*args, **kwargs):
            calls.append(torch.is_grad_enabled())
            return wrapped(*args, **kwargs)
        layer._gradient_checkpointing_func = counting

    _, plain, _ = one_step(tiny_model_dir, tmp_path / "a")
    _, ckpt, _ = one_step(tiny_model_dir, tmp_path / "b", count_checkpointed_calls, model__gradient_checkpointing=True)
    # with gradient: the student forward of each micro-batch (12 sequences in 5s); transformers < 5.20 also
    # routes the no-grad teacher forwards through it
    assert calls.count(True) == 3
    # the plain step shares each group's prompt forward, the checkpointed one cannot: float rounding apart
    assert_same_weights(plain, ckpt, atol=ROUNDING)


def test_the_materialised_logits_path_gives_the_fused_kl_step(tiny_model_dir, tmp_path):
    _, fused, m_fused = one_step(tiny_model_dir, tmp_path / "a")
    _, plain, m_plain = one_step(tiny_model_dir, tmp_path / "b", loss__fused_kl=False)
    assert abs(m_fused["kl/distill_mean"] - m_plain["kl/distill_mean"]) < 1e-6 < m_fused["kl/distill_mean"]
    assert abs(m_fused["entropy/mean"] - m_plain["entropy/mean"]) < 1e-5
    assert_same_weights(fused, plain, atol=ROUNDING)


def test_bf16_autocast_keeps_float32_weights_and_a_close_step(tiny_model_dir, tmp_path):
    _, full, m_full = one_step(tiny_model_dir, tmp_path / "a")
    trainer, mixed, m_mixed = one_step(tiny_model_dir, tmp_path / "b", model__autocast=True)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert trainer.optimizer.state[next(trainer.model.parameters())]["exp_avg"].dtype == torch.float32
    assert m_mixed["step/skipped"] == 0.0
    assert abs(m_full["kl/distill_mean"] - m_mixed["kl/distill_mean"]) < 0.05 * m_full["kl/distill_mean"]
    assert_same_weights(full, mixed, atol=1e-3)  # lr 1e-4 steps; bf16 activations move them by far less


def test_an_untied_lm_head_gets_its_own_gradient_on_both_kl_paths(tmp_path):
    torch.manual_seed(0)
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(tokenizer, TinyModelConfig(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1,
                                                        head_dim=32, intermediate_size=128))
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.02)
    model.save_pretrained(tmp_path / "untied")
    tokenizer.save_pretrained(tmp_path / "untied")
    steps = {}
    for fused in (True, False):
        trainer, weights, _ = one_step(tmp_path / "untied", tmp_path / f"run-{fused}", loss__fused_kl=fused)
        head, embed = trainer.model.lm_head.weight, trainer.model.get_input_embeddings().weight
        assert lm_head_weight(trainer.model) is head and head.data_ptr() != embed.data_ptr()
        steps[fused] = weights
    before = model.state_dict()
    assert not torch.equal(steps[True]["lm_head.weight"], before["lm_head.weight"])
    assert not torch.equal(steps[True]["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    assert_same_weights(steps[True], steps[False], atol=1e-6)


def test_device_and_token_budget_settings_are_validated():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="model.device='cuda' but torch sees no CUDA device"):
            resolve_device("cuda")
    cfg = TrainConfig()
    cfg.model.device = "gpu"
    with pytest.raises(ValueError, match="model.device='gpu' is invalid"):
        cfg.validate()
    cfg.model.device, cfg.optim.micro_batch_tokens = "cuda:1", -1
    with pytest.raises(ValueError, match="optim.micro_batch_tokens=-1 is invalid"):
        cfg.validate()


def test_gpu_check_dry_run_runs_the_bench_path_on_the_cpu(tmp_path):
    out = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--engine", "hf", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    settings = [r for r in rows if "kl" in r]
    assert [(r["length"], r["kl"]) for r in settings] == [(16, "fused"), (16, "logits"), (32, "fused"), (32, "logits")]
    for r in settings:
        assert r["update_tok_s"] > 0 and r["teacher_tok_s"] > 0 and r["mem/peak_rss_gib"] > 0
        assert (r["rollout_tok_s"] is None) == (r["kl"] == "logits")  # the logits step replays the fused step's batch
    assert rows[-1]["sync/mean_abs_diff_new_weights"] < 0.01 < 0.05 < rows[-1]["sync/mean_abs_diff_old_weights"]
    assert "| length | kl |" in proc.stdout
