"""SDPG on TRL's stack, on the CPU: the TRL-based trainer against the engine (loss terms, gradients, weights after two
steps on one fixed batch), two data-parallel processes against one, a real run whose records the dashboard replays,
and golden config translations.

Run as a script (`python tests/test_scale.py OUT_DIR MODEL_DIR`, under torchrun for several processes) this module is
the data-parallel test's worker: `scripted_run`.
"""
import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

from conftest import tiny_config
from lab import curves_figure, replay_status
from sdpg.config import TrainConfig, preset
from sdpg.data import PromptRow, render_prompts
from sdpg.forward import lm_head_weight, response_hidden, token_logp
from sdpg.losses import group_advantages
from sdpg.models import load_model_and_tokenizer
from sdpg.records import RESPONSE_FIELDS, ROLLOUT_FIELDS, RecordStream
from sdpg.reward import MathVerifier
from sdpg.rollout import Rollout, response_mask_from_ids
from sdpg.run import build_trainer
from sdpg.scale.config import (ScaleConfig, accelerate_config, batch_layout, grpo_config, grpo_kwargs, launch_commands,
                               vllm_serve_args, write_accelerate_config)
from sdpg.scale.launch import main as launch
from sdpg.scale.records import RecordStreamCallback
from sdpg.scale.trainer import SDPGTrainer, rows_to_dataset
from sdpg.tasks.addition import make_rows
from sdpg.trainer import Scored

# ---------------- parity with the engine ----------------
G = 4
TEMPERATURE = 0.8
KINDS = (("right", "wrong", "bare", "right"), ("wrong", "wrong", "bare", "wrong"), ("wrong", "right", "bare", "wrong"))
"""the responses of the three groups: rewards 1 0 0 1, all 0 (a zero-variance group), 0 1 0 0"""


def response_text(kind: str, answer: str) -> str:
    return {"right": "\\boxed{" + answer + "}", "wrong": "\\boxed{" + str(int(answer) + 1) + "}", "bare": answer}[kind]


def parity_config(model_dir, run_dir, micro_batch: int, mini_batch_prompts: int = 0,
                  recompute: bool = False) -> TrainConfig:
    """Every term on and moving: gate, a decaying beta, a reference anchor, the dual clip, temperature, and the
    optimizer's lr warmup and weight decay. Without recomputation the sampler's wobbly log-probs are the old ones,
    so ratios leave 1 from the first update."""
    return tiny_config(model_dir, run_dir, run__steps=2, rollout__prompts_per_step=3, rollout__temperature=TEMPERATURE,
                       loss__beta=0.5, loss__beta_decay=3, loss__alpha=0.05, loss__clip_c=1.5,
                       optim__lr=3e-2, optim__warmup_steps=2, optim__weight_decay=0.1, optim__micro_batch=micro_batch,
                       optim__mini_batch_prompts=mini_batch_prompts, rollout__recompute_old_logp=recompute)


def fixed_batch(trainer, rows: list[PromptRow]) -> Scored:
    """Hand-written completions scored by the engine's verifier; old log-probs those of a sampler that differs from
    the model (so ratios leave 1 and clip)."""
    tok, eng = trainer.tokenizer, trainer.engine
    prompt_ids, prompt_mask = eng.encode_prompts(render_prompts(tok, [r.prompt for r in rows for _ in range(G)]))
    texts = [response_text(kind, r.answer) for r, kinds in zip(rows, KINDS, strict=True) for kind in kinds]
    seqs = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    resp = torch.tensor([s + [eng.pad_id] * (width - len(s)) for s in seqs])  # (B, T)
    mask, truncated = response_mask_from_ids(resp, eng.eos_ids)
    with torch.no_grad():
        h = response_hidden(trainer.model, prompt_ids, prompt_mask, resp, mask)  # (B, T, H)
        logp = token_logp(h, lm_head_weight(trainer.model), resp, temperature=TEMPERATURE)  # (B, T)
    wobble = 0.6 * torch.sin(torch.arange(resp.numel(), dtype=torch.float32)).view(resp.shape)  # (B, T)
    rollout = Rollout(prompt_ids, prompt_mask, resp, mask, (logp + wobble) * mask,
                      tok.batch_decode(resp, skip_special_tokens=True), truncated, G)
    verdicts = trainer.verifier.score(rollout.texts, [r.answer for r in rows for _ in range(G)])
    rewards = torch.tensor([v.reward for v in verdicts])  # (B,)
    zero_var = float((rewards.view(-1, G).std(-1, unbiased=False) == 0).float().mean())
    return Scored(rows, rollout, verdicts, rewards, group_advantages(rewards, G), zero_var, 0)


def replay(batch: Scored):
    """TRL rollout hook returning the batch's tokens and sampler log-probs for whatever prompt order TRL draws."""
    ro = batch.rollout
    group_of = {r.prompt: gi for gi, r in enumerate(batch.rows)}

    def rollout_func(prompts, trainer):
        taken, out = Counter(), {"prompt_ids": [], "completion_ids": [], "logprobs": []}
        for prompt in prompts:
            gi = group_of[prompt[-1]["content"]]
            i = gi * G + taken[gi]
            taken[gi] += 1
            n = int(ro.response_mask[i].sum())
            out["prompt_ids"].append(ro.prompt_ids[i][ro.prompt_mask[i].bool()].tolist())
            out["completion_ids"].append(ro.response_ids[i, :n].tolist())
            out["logprobs"].append(ro.old_logp[i, :n].tolist())
        return out

    return rollout_func


class GradSnapshots(TrainerCallback):
    """Copies the gradients the optimizer is about to apply (after clipping), one dict per step."""

    def __init__(self):
        self.steps = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def run_engine(cfg: TrainConfig, tmp_path):
    trainer = build_trainer(cfg, RecordStream(tmp_path / "engine"), progress=False)
    rows = make_rows(3, digits=(1, 1), seed=0)
    batch = fixed_batch(trainer, rows)
    trainer.sample_rollouts = lambda: batch
    grads = []
    named = list(trainer.model.named_parameters())
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: grads.append({n: p.grad.detach().clone() for n, p in named}))
    metrics = [trainer.train_step() for _ in range(cfg.run.steps)]
    return trainer, batch, metrics, grads


def run_trl(cfg: TrainConfig, batch: Scored, verifier: MathVerifier):
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    records, grads = RecordStreamCallback(cfg.run.run_dir, cfg.to_dict()), GradSnapshots()
    trainer = SDPGTrainer(cfg, model=model, tokenizer=tokenizer, train_rows=batch.rows, verifier=verifier,
                          callbacks=[records, grads], rollout_func=replay(batch))
    trainer.shuffle_dataset = False  # TRL draws the groups in the engine's order, so the mini-batches are the same
    trainer.train()
    return trainer, RecordStream.open(cfg.run.run_dir), grads.steps


ENGINE_ONLY = {"time/reference", "time/old_logp"}
"""engine metrics the TRL-based trainer has no counterpart for (its reference log-probs and its recomputed old
log-probs are part of TRL's rollout phase, counted in `time/rollout`)"""
UNTIMED = ("time/", "perf/")
EXACT_UNDER_ANY_SPLIT = ("loss/total", "loss/pg", "loss/distill", "loss/ref_kl", "kl/ref_mean",
                         "kl/approx_old", "loss/clipfrac_high", "loss/clipfrac_low", "loss/dual_clipfrac",
                         "entropy/mean", "beta/effective", "reward/mean", "reward/accuracy", "reward/no_answer",
                         "adv/zero_var_groups", "response/length_mean", "response/truncated", "grad/norm", "optim/lr",
                         "gate/fraction", "gate/tokens", "kl/distill_gated_mean")
"""metrics that do not depend on how a step is cut into micro-batches or processes (`sdpg.metrics` rules); not
`kl/distill_mean`: gated SDPG measures it on the recorded groups, which process 0 picks from its own share"""


@pytest.mark.parametrize("micro_batch, mini_batch_prompts, recompute", [(12, 0, False), (5, 0, False), (2, 1, True)],
                         ids=["one-micro-batch", "accumulated", "mini-batches"])
def test_two_trl_steps_match_two_engine_steps_on_the_same_batch(tiny_model_dir, tmp_path, micro_batch,
                                                                 mini_batch_prompts, recompute):
    cfg = parity_config(tiny_model_dir, tmp_path / "engine", micro_batch, mini_batch_prompts, recompute)
    cfg.run.steps = 3  # verl's warmup trains step 1 at rate 0, so the anchor has something to pull back from step 3
    engine, batch, ours, our_grads = run_engine(cfg, tmp_path)
    try:
        trl_cfg = TrainConfig.from_dict(cfg.to_dict())
        trl_cfg.run.run_dir = str(tmp_path / "trl")
        trainer, stream, trl_grads = run_trl(trl_cfg, batch, engine.verifier)
    finally:
        engine.verifier.close()
    theirs = stream.metrics()
    updates = 3 if mini_batch_prompts else 1
    assert [m["step"] for m in theirs] == [1, 2, 3] and [m["optim/updates"] for m in ours] == [updates] * 3
    # the batch exercises every term: outcome, gated distillation, anchor (step 3), clipping both ways, dual clip
    assert int((batch.adv > 0).sum()) == 3 and ours[0]["loss/pg"] != 0 and ours[0]["loss/distill"] > 0
    assert ours[2]["loss/ref_kl"] > 1e-6 and ours[1]["beta/effective"] == pytest.approx(0.5 / 3)
    assert [m["optim/lr"] for m in ours] == [0.0, cfg.optim.lr / 2, cfg.optim.lr]
    # recomputed, the ratios leave 1 only once an update has moved the weights: step 1 runs at lr 0, so from step 2
    moved = ours[1:] if recompute else ours[:1]
    for key in ("loss/clipfrac_high", "loss/clipfrac_low", "loss/dual_clipfrac"):
        assert max(m[key] for m in moved) > 0, key
    if recompute:  # the sampler's wobble is only seen as the gap
        assert ours[0]["rollout/logp_gap_max"] > 0.1 and abs(ours[0]["kl/approx_old"]) < 1e-6
        assert abs(ours[1]["kl/approx_old"]) > 1e-4
    assert set(ours[0]) - set(theirs[0]) == ENGINE_ONLY
    assert set(theirs[0]) - set(ours[0]) == {"step", "time"}  # added by the record stream
    # Adam's first steps move each weight by about lr whatever the gradient's size, so float noise in tiny gradient
    # entries moves weights by up to ~lr; with several updates a step, later updates see that as ~1e-5 in their
    # statistics. A wrong mini-batch, normaliser or old log-prob would be off by orders more.
    rel, abs_ = (1e-4, 1e-5) if mini_batch_prompts else (1e-5, 1e-6)
    for mine, other in zip(ours, theirs):
        for key in sorted(set(mine) - ENGINE_ONLY):
            if not key.startswith(UNTIMED):
                assert other[key] == pytest.approx(mine[key], rel=rel, abs=abs_), key
    assert len(our_grads) == len(trl_grads) == 3 * updates
    for mine, other in zip(our_grads, trl_grads):
        for name, g in mine.items():  # 1e-7: an update whose loss is ~0 (step 1's middle one) has gradients of noise
            torch.testing.assert_close(other[name], g, rtol=10 * rel, atol=10 * rel * float(g.abs().max()) + 1e-7,
                                       msg=name)
    # the same noise shows in the weights; a wrong schedule, weight-decay set or step would be off by lr / 2 or more
    final = trainer.model.state_dict()
    for name, w in engine.model.state_dict().items():  # six updates: one entry in ~80k was seen 8e-4 off
        torch.testing.assert_close(final[name], w, rtol=0, atol=2e-3 if mini_batch_prompts else 5e-4, msg=name)


def test_a_non_finite_update_is_skipped_on_the_trl_path_as_in_the_engine(tiny_model_dir, tmp_path):
    cfg = parity_config(tiny_model_dir, tmp_path / "engine", micro_batch=5)
    cfg.run.steps, cfg.optim.warmup_steps = 1, 0  # an applied update would move the weights at once
    engine = build_trainer(cfg, RecordStream(tmp_path / "engine"), progress=False)
    start = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    batch = fixed_batch(engine, make_rows(3, digits=(1, 1), seed=0))
    batch.rollout.old_logp[6, 0] = -float("inf")  # the sampler's old log-prob, read by the ratio (no recomputation)
    engine.sample_rollouts = lambda: batch
    try:
        ours = engine.train_step()
        trl_cfg = TrainConfig.from_dict(cfg.to_dict())
        trl_cfg.run.run_dir = str(tmp_path / "trl")
        model, tokenizer = load_model_and_tokenizer(trl_cfg.model)
        trainer = SDPGTrainer(trl_cfg, model=model, tokenizer=tokenizer, train_rows=batch.rows,
                              verifier=engine.verifier, rollout_func=replay(batch),
                              callbacks=[RecordStreamCallback(trl_cfg.run.run_dir, trl_cfg.to_dict())])
        trainer.shuffle_dataset = False
        trainer.train()
    finally:
        engine.verifier.close()
    stream = RecordStream.open(trl_cfg.run.run_dir)
    theirs = stream.metrics()
    assert [m["step"] for m in theirs] == [1]
    for row in (ours, theirs[0]):
        assert (row["step/skipped"], row["optim/updates"]) == (1.0, 0.0), row
    for name, w in trainer.model.named_parameters():
        assert torch.equal(w, start[name]) and torch.equal(engine.model.get_parameter(name), start[name]), name
    for events in (engine.records.events(), stream.events()):
        skipped = [e for e in events if e["event"] == "step_skipped"]
        assert len(skipped) == 1 and skipped[0]["step"] == 1 and "old_logp" in skipped[0]["reason"], skipped


def test_the_trainer_tokenizes_prompts_as_the_engine_does(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    rows = make_rows(4, digits=(1, 2), seed=1)
    verifier = MathVerifier(timeout_s=5.0)
    try:
        trainer = SDPGTrainer(cfg, model=model, tokenizer=tokenizer, train_rows=rows, verifier=verifier)
    finally:
        verifier.close()
    dataset = rows_to_dataset(rows, tokenizer)
    ids, mask = trainer._teacher_prompts(list(dataset))
    student, _, _ = trainer._tokenize_prompts([x["prompt"] for x in dataset])
    for i, row in enumerate(rows):
        for text, got in ((row.teacher_prompt, ids[i][mask[i].bool()].tolist()), (row.prompt, student[i])):
            (rendered,) = render_prompts(tokenizer, [text])
            assert got == tokenizer(rendered, add_special_tokens=False).input_ids


# ---------------- data parallel: two processes train like one ----------------
def scripted_rollouts(rows: list[PromptRow], tokenizer):
    """TRL rollout hook giving every sequence of the step its `KINDS` response; a sequence's place in its group comes
    from its place in the whole step (this process's slice starts at process_index x its length)."""
    group_of = {r.prompt: gi for gi, r in enumerate(rows)}

    def rollout_func(prompts, trainer):
        start = trainer.accelerator.process_index * len(prompts)
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": None}
        for k, prompt in enumerate(prompts):
            row = rows[group_of[prompt[-1]["content"]]]
            (rendered,) = render_prompts(tokenizer, [row.prompt])
            out["prompt_ids"].append(tokenizer(rendered, add_special_tokens=False).input_ids)
            text = response_text(KINDS[group_of[row.prompt]][(start + k) % G], row.answer)
            out["completion_ids"].append(tokenizer(text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id])
        return out

    return rollout_func


def scripted_run(out_dir: Path, model_dir: Path) -> None:
    """Two steps of `SDPGTrainer` on the scripted batch in every process of the group (on the CPU: gloo); process 0
    writes the records and the final weights to `out_dir`."""
    from accelerate import PartialState

    state = PartialState(cpu=True)  # accelerate sees a CPU process group only with cpu=True (and transformers, which
    # re-creates this state, only with ACCELERATE_USE_CPU set)
    cfg = parity_config(model_dir, out_dir / "run", micro_batch=5)
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    rows = make_rows(3, digits=(1, 1), seed=0)
    verifier = MathVerifier(timeout_s=10.0)
    try:
        trainer = SDPGTrainer(cfg, model=model, tokenizer=tokenizer, train_rows=rows, verifier=verifier,
                              callbacks=[RecordStreamCallback(cfg.run.run_dir, cfg.to_dict())],
                              rollout_func=scripted_rollouts(rows, tokenizer))
        trainer.train()
    finally:
        verifier.close()
    if state.is_main_process:
        torch.save(trainer.model.state_dict(), out_dir / "weights.pt")


def test_two_data_parallel_processes_train_like_one(tiny_model_dir, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    env = os.environ | {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1",
                        "ACCELERATE_USE_CPU": "true"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(tmp_path / "two"), str(tiny_model_dir)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    scripted_run(tmp_path / "one", tiny_model_dir)
    one, two = RecordStream.open(tmp_path / "one" / "run"), RecordStream.open(tmp_path / "two" / "run")
    assert [e["processes"] for e in two.events() if e["event"] == "start"] == [2]
    assert [m["step"] for m in two.metrics()] == [1, 2]
    for mine, other in zip(one.metrics(), two.metrics()):
        for key in EXACT_UNDER_ANY_SPLIT:
            if not key.startswith("time"):
                assert other[key] == pytest.approx(mine[key], rel=1e-5, abs=1e-6), key
        assert other["adv/values"] == mine["adv/values"]
    # process 0 holds sequences 0-5 of 12: one whole group to record, the same as group 0 of the one-process run
    first, other = one.rollouts(2)[0], two.rollouts(2)
    assert len(other) == 1 and [r["text"] for r in other[0]["responses"]] == [r["text"] for r in first["responses"]]
    for mine, theirs in zip(first["responses"], other[0]["responses"]):
        assert theirs["kl"] == pytest.approx(mine["kl"], abs=5e-6)  # after one update: ~1e-6 of float noise seen
    weights_one, weights_two = torch.load(tmp_path / "one" / "weights.pt"), torch.load(tmp_path / "two" / "weights.pt")
    for name, w in weights_one.items():
        torch.testing.assert_close(weights_two[name], w, rtol=0, atol=5e-4, msg=name)


# ---------------- a real run through the launcher, replayed by the dashboard ----------------
def test_a_cpu_run_through_the_launcher_is_replayed_by_the_dashboard(tiny_model_dir, tmp_path, capsys):
    import app as dashboard  # gradio: imported here, not in the data-parallel test's worker processes

    cfg = tiny_config(tiny_model_dir, "", loss__gate=False, loss__beta=0.5)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    run_dir = tmp_path / "runs" / "trl-run"
    assert launch(["--config", str(tmp_path / "cfg.json"), "--quiet", "--run-dir", str(run_dir)]) == 0
    assert f"replay with: python app.py --replay {run_dir}" in capsys.readouterr().out
    ctl = dashboard.Controller(tmp_path / "runs")
    assert dashboard.list_runs(tmp_path / "runs") == [str(run_dir)]
    assert ctl.open_replay(str(run_dir))[1] == "ok"
    stream = ctl.stream()
    assert "FINISHED" in ctl.status_card() and replay_status(stream.events()) == ("finished", None)
    assert [e["event"] for e in stream.events()] == ["start", "checkpoint", "finished"]
    assert (run_dir / "trl" / "checkpoint-3" / "model.safetensors").is_file()
    metrics = stream.metrics()
    assert [m["step"] for m in metrics] == dashboard.browsable_steps(stream) == [1, 2, 3]
    assert all(m["kl/distill_mean"] > 0 and math.isfinite(m["grad/norm"]) for m in metrics)
    assert TrainConfig.from_dict(stream.config()).to_dict() == TrainConfig.from_dict(cfg.to_dict()).to_dict() | {
        "run": cfg.to_dict()["run"] | {"run_dir": str(run_dir)}}
    curves = curves_figure(metrics, stream.config())
    assert [list(t.y) for t in curves.data if t.name == "reward"] == [[m["reward/mean"] for m in metrics]]
    for step in (1, 3):
        groups = stream.rollouts(step)
        assert [g["group"] for g in groups] == [0, 1] and set(groups[0]) == set(ROLLOUT_FIELDS)
        for resp in (r for g in groups for r in g["responses"]):
            assert set(resp) - {"sampler_logp"} == set(RESPONSE_FIELDS) - {"sampler_logp"}  # TRL's sampler: only with vLLM
            assert all(len(resp[k]) == len(resp["tokens"]) for k in ("kl", "student_logp", "teacher_topk", "ref_logp"))
        heatmap, _, card, topk, whatif = dashboard.selection_views(stream, step, 1, "kl", 0, 0, 0)
        first = groups[1]["responses"][0]
        assert list(heatmap.data[0].z[0])[:len(first["kl"])] == first["kl"].tolist()
        assert groups[1]["prompt"] in card and len(topk.data) == 2 and whatif.data


def test_a_crash_in_a_launched_run_is_recorded_for_the_dashboard(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", rollout__max_prompt_tokens=12)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(ValueError, match="with its privileged context, more than rollout.max_prompt_tokens=12"):
        launch(["--config", str(tmp_path / "cfg.json"), "--quiet"])
    status, error = replay_status(RecordStream.open(tmp_path / "run").events())
    assert status == "crashed" and "max_prompt_tokens=12" in error


# ---------------- golden translations ----------------
def paper_config() -> TrainConfig:
    cfg = preset("paper")
    cfg.run.run_dir = "runs/paper"
    return cfg


PAPER_ON_8 = ScaleConfig(num_processes=8, backend="zero2", vllm_server=True, vllm_host="10.0.0.9",
                         vllm_tensor_parallel_size=2)


def test_the_paper_settings_become_these_grpo_config_fields():
    assert grpo_kwargs(paper_config(), PAPER_ON_8, world_size=8) == {
        # 400 training steps of 8 updates: 128 prompts x 8 = 1024 sequences, 128 per process; mini-batches of 16
        # prompts = 128 sequences, 16 per process: micro-batches of 8, 2 accumulated per update, 16 per generation
        "output_dir": "runs/paper/trl", "max_steps": 3200, "seed": 0,
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "steps_per_generation": 16,
        "num_iterations": 1, "num_generations": 8, "max_completion_length": 4096, "temperature": 1.0, "top_p": 1.0,
        "top_k": 0, "chat_template_kwargs": {"enable_thinking": True},  # the script renders with thinking on
        "learning_rate": 1e-6, "adam_beta1": 0.9, "adam_beta2": 0.999, "weight_decay": 0.1, "max_grad_norm": 1.0,
        "optim": "adamw_torch", "lr_scheduler_type": "constant",
        "beta": 1e-3, "epsilon": 0.2, "epsilon_high": 0.2, "scale_rewards": "group",
        "bf16": True, "activation_checkpointing": True, "trust_remote_code": False,
        "logging_strategy": "steps", "logging_steps": 1, "report_to": "none", "disable_tqdm": True,
        "save_strategy": "steps", "save_steps": 400, "save_total_limit": 2, "ddp_find_unused_parameters": False,
        "use_vllm": True, "vllm_mode": "server", "vllm_server_host": "10.0.0.9", "vllm_server_port": 8000,
        "vllm_importance_sampling_correction": False,
    }


def test_translation_follows_method_precision_micro_batch_budget_and_colocated_vllm():
    cfg = paper_config()
    cfg.loss.method, cfg.loss.adv_scale = "self_distill", "none"
    cfg.model.dtype, cfg.model.autocast, cfg.model.gradient_checkpointing = "float32", True, False
    cfg.optim.micro_batch_tokens = 3 * 4096 + 5  # room for three of the longest responses
    cfg.rollout.engine, cfg.run.save_every = "vllm", 0
    kwargs = grpo_kwargs(cfg, ScaleConfig(num_processes=4), world_size=4)
    assert (kwargs["beta"], kwargs["scale_rewards"], kwargs["bf16"], kwargs["activation_checkpointing"]) == \
        (0.0, "none", True, False)  # self-distillation has no reference anchor
    # a 16-prompt mini-batch is 128 sequences, 32 per process = 2 x 16; a step's 256 per process are 128 micro-batches
    assert (kwargs["per_device_train_batch_size"], kwargs["gradient_accumulation_steps"],
            kwargs["steps_per_generation"]) == (2, 16, 128)
    assert kwargs["save_steps"] == 400 * 8  # save_every = 0: only at the end (TRL counts the 8 updates a step)
    assert {k: kwargs[k] for k in kwargs if k.startswith("vllm")} == {
        "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3, "vllm_enable_sleep_mode": True,
        "vllm_tensor_parallel_size": 1, "vllm_max_model_length": 6144, "vllm_importance_sampling_correction": False}


def test_the_cpu_config_builds_a_grpo_config_whose_generation_batch_is_one_step(tiny_model_dir, tmp_path):
    args = grpo_config(tiny_config(tiny_model_dir, tmp_path), ScaleConfig(), world_size=1)
    # 3 prompts x 4 = 12 sequences; micro_batch 5 -> the largest divisor of 12 that fits is 4
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation,
            args.generation_batch_size, args.num_generations) == (4, 3, 3, 12, 4)
    assert (args.use_vllm, args.bf16, args.gradient_checkpointing, args.beta) == (False, False, False, 1e-3)
    assert batch_layout(tiny_config(tiny_model_dir, tmp_path, optim__micro_batch=64), 1) == (12, 1, 1)
    # one-prompt mini-batches: 4 sequences an update, micro-batches of 4, 3 updates a generation
    assert batch_layout(tiny_config(tiny_model_dir, tmp_path, optim__mini_batch_prompts=1), 1) == (4, 1, 3)


def test_accelerate_files_are_these_and_accelerate_reads_them(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    two_nodes = ScaleConfig(num_processes=16, num_machines=2, backend="zero2", main_process_ip="10.0.0.1")
    expected = {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "distributed_type": "DEEPSPEED",
        "deepspeed_config": {"deepspeed_multinode_launcher": "standard", "offload_optimizer_device": "none",
                             "offload_param_device": "none", "zero3_init_flag": False, "zero_stage": 2},
        "downcast_bf16": "no", "gpu_ids": "all", "machine_rank": 0, "main_training_function": "main",
        "mixed_precision": "bf16", "num_machines": 2, "num_processes": 16, "rdzv_backend": "static",
        "same_network": True, "use_cpu": False, "main_process_ip": "10.0.0.1", "main_process_port": 29500,
    }
    path = write_accelerate_config(paper_config(), two_nodes, tmp_path / "zero2.yaml")
    assert yaml.safe_load(path.read_text()) == expected
    loaded = load_config_from_file(str(path))
    assert (loaded.distributed_type, loaded.num_processes, loaded.deepspeed_config["zero_stage"]) == \
        ("DEEPSPEED", 16, 2)
    ddp = accelerate_config(tiny_config("m", ""), ScaleConfig(num_processes=4))
    assert (ddp["distributed_type"], ddp["mixed_precision"], ddp["num_processes"]) == ("MULTI_GPU", "no", 4)
    assert "deepspeed_config" not in ddp and "main_process_ip" not in ddp


def test_vllm_serve_arguments_are_these_and_trl_parses_them():
    from trl.scripts.vllm_serve import build_command, make_parser

    args = vllm_serve_args(paper_config(), PAPER_ON_8, "Qwen/Qwen3-4B")
    assert args == ["--model", "Qwen/Qwen3-4B", "--tensor-parallel-size", "2", "--host", "0.0.0.0", "--port", "8000",
                    "--gpu-memory-utilization", "0.9", "--dtype", "bfloat16", "--max-model-len", "6144"]
    (parsed,) = make_parser().parse_args_into_dataclasses(args)
    assert (parsed.model, parsed.tensor_parallel_size, parsed.dtype, parsed.max_model_len) == \
        ("Qwen/Qwen3-4B", 2, "bfloat16", 6144)
    served = build_command(parsed)
    assert served[served.index("--logprobs-mode") + 1] == "processed_logprobs"  # old log-probs include temperature


def test_the_plan_writes_config_accelerate_file_and_launch_script(tmp_path, capsys):
    cfg = paper_config()
    cfg.model.name = "Qwen/Qwen3-4B"
    (tmp_path / "paper.json").write_text(json.dumps(cfg.to_dict()))
    plan = tmp_path / "plan"
    assert launch(["--config", str(tmp_path / "paper.json"), "--scale.num_processes", "8", "--scale.backend", "zero2",
                   "--scale.vllm_server", "--scale.vllm_host", "10.0.0.9", "--plan", str(plan)]) == 0
    server, train = capsys.readouterr().out.strip().splitlines()
    assert server.startswith("trl vllm-serve --model Qwen/Qwen3-4B --tensor-parallel-size 1 ")
    assert train == (f"accelerate launch --config_file {plan / 'accelerate.yaml'} -m sdpg.scale.launch --config "
                     f"{plan / 'config.json'} --scale.num_processes 8 --scale.backend zero2 --scale.vllm_server "
                     "--scale.vllm_host 10.0.0.9")
    assert TrainConfig.from_dict(json.loads((plan / "config.json").read_text())).to_dict() == cfg.to_dict()
    assert (plan / "launch.sh").read_text() == f"#!/bin/sh\nset -e\n# first, on 10.0.0.9: {server}\n{train}\n"
    assert yaml.safe_load((plan / "accelerate.yaml").read_text())["num_processes"] == 8
    local = ScaleConfig(num_processes=4, vllm_server=True, vllm_tensor_parallel_size=2)
    assert launch(["--config", str(tmp_path / "paper.json"), "--scale.num_processes", "4", "--scale.vllm_server",
                   "--scale.vllm_tensor_parallel_size", "2", "--plan", str(plan)]) == 0
    server, train = launch_commands(cfg, local, config_file=str(plan / "config.json"),
                                    accelerate_file=str(plan / "accelerate.yaml"), model_path="Qwen/Qwen3-4B")
    assert (plan / "launch.sh").read_text().splitlines()[2:] == [f"CUDA_VISIBLE_DEVICES=4,5 {server} &",
                                                                 f"CUDA_VISIBLE_DEVICES=0,1,2,3 {train}"]


# ---------------- refusals ----------------
@pytest.mark.parametrize("change, needle", [
    ({"loss__method": "opsd"}, r"loss.method='opsd' needs \['ref_distill_kl'\]"),
    ({"rollout__group_size": 1}, "rollout.group_size=1 is invalid here"),
    ({"run__dynamic_sampling": True}, "run.dynamic_sampling=True is not supported"),
    ({"rollout__prompts_per_step": 5}, "a mini-batch's 20 sequences .* must split evenly over 8 training processes"),
    ({"run__run_dir": ""}, "run.run_dir is empty"),
    ({"rollout__top_p": 0.9}, "rollout.top_p=0.9 is invalid with scale.vllm_server"),
])
def test_settings_the_trl_trainer_cannot_run_are_refused(tiny_model_dir, tmp_path, change, needle):
    cfg = tiny_config(tiny_model_dir, tmp_path, **change)
    with pytest.raises(ValueError, match=needle):
        grpo_kwargs(cfg, ScaleConfig(num_processes=8, vllm_server=True), world_size=8)


@pytest.mark.parametrize("scale, needle", [
    (ScaleConfig(backend="fsdp"), r"scale.backend='fsdp' is invalid: must be one of \('ddp', 'zero2'\)"),
    (ScaleConfig(num_processes=16, num_machines=2), "scale.main_process_ip='' is invalid: must be set"),
    (ScaleConfig(num_processes=6, num_machines=4), "must be a multiple of num_machines"),
])
def test_bad_scale_settings_are_refused(scale, needle):
    with pytest.raises(ValueError, match=needle):
        scale.validate()


def test_the_launcher_explains_what_it_refuses(tmp_path, capsys):
    assert launch(["--method", "opsd_fork", "--plan", str(tmp_path)]) == 2
    assert "loss.method='opsd_fork' needs ['ref_teacher_logp']" in capsys.readouterr().err
    assert launch(["--resume", str(tmp_path)]) == 2
    assert "--resume is not supported" in capsys.readouterr().err
    with pytest.raises(ValueError, match="scale.vllm_server is False"):
        vllm_serve_args(paper_config(), ScaleConfig(), "m")
    with pytest.raises(ValueError, match="needs the model_path the server loads"):
        launch_commands(paper_config(), PAPER_ON_8, config_file="c", accelerate_file="a")


if __name__ == "__main__":
    scripted_run(Path(sys.argv[1]), Path(sys.argv[2]))
