"""Hostile and unlucky inputs (issue 13, items 1, 5, 6, 7, 10): settings, data rows, resumes and model ids
that used to train silently wrong, exhaust the host or run foreign code now fail early and say where."""
import json
import math
import os
import time

import huggingface_hub
import pytest
import torch
from gradio_client import Client
from safetensors.torch import load_file
from transformers import Qwen3Config

import app as dashboard
from conftest import tiny_config
from fixtures.waiting import free_port
from sdpg import run as run_module
from sdpg.checkpoint import STATE_FILE, latest_checkpoint, load_checkpoint, save_checkpoint
from sdpg.config import ModelConfig, TrainConfig
from sdpg.data import TEACHER_CONTEXT_TOKEN, DataError, load_rows
from sdpg.guards import NonFiniteWeightsError
from sdpg.memory import MemoryPlanError
from sdpg.models import ModelLoadError, load_model_and_tokenizer
from sdpg.records import RecordStream
from sdpg.run import RunHandle, build_trainer
from sdpg.cli import build_parser, config_from_args


def _row(prompt, answer="2", **extra):
    return {"prompt": [{"role": "user", "content": prompt}], "reward_model": {"ground_truth": answer}, **extra}


def _jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _good(i):
    return _row(f"Q:{i}+1=\n{TEACHER_CONTEXT_TOKEN}answer: {i + 1}\n", str(i + 1))


def _events(records: RecordStream, kind: str) -> list[dict]:
    return [e for e in records.events() if e["event"] == kind]


# ---------------- item 1: ranges before anything is allocated ----------------
@pytest.mark.parametrize("section,name,value", [
    ("rollout", "group_size", 100_000_000), ("rollout", "prompts_per_step", 10 ** 9), ("run", "steps", 10 ** 12),
    ("rollout", "max_new_tokens", 10 ** 9), ("rollout", "max_prompt_tokens", 10 ** 9), ("data", "n_val", 10 ** 12),
    ("data", "n_train", 10 ** 12), ("optim", "micro_batch", 10 ** 12), ("run", "eval_samples", 10 ** 6),
    ("run", "record_groups", 10 ** 6), ("reward", "workers", 10 ** 4),
])
def test_absurd_numeric_settings_are_refused_naming_flag_value_and_range(section, name, value):
    cfg = TrainConfig()
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ValueError) as err:
        cfg.validate()
    message = str(err.value)
    assert f"--{section}.{name}" in message and f"={value}" in message and "must be a finite number in [" in message


def test_page_start_with_an_absurd_group_size_says_why_and_starts_nothing(tiny_model_dir, tmp_path):
    ctl = dashboard.Controller(tmp_path, allowed_roots=[tiny_model_dir])  # the model folder is readable
    demo = dashboard.build_app(ctl, base_config=tiny_config(tiny_model_dir, ""))
    _, url, _ = dashboard.serve(demo, port=free_port(), block=False)
    try:
        client = Client(url, verbose=False)
        for group_size in (1e30, 100_000_000):
            values = dict(method="sdpg", beta=0.05, alpha=1e-3, ref_mode="urkl", gate=True, beta_warmup=0,
                          beta_decay=0, lr=1e-4, group_size=group_size, temperature=1.0, steps=3,
                          model=str(tiny_model_dir), data="embedded", val="embedded", task="add")
            message = client.predict(*values.values(), api_name="/start")
            assert "Not started" in message and "--rollout.group_size" in message and "[1, 1024]" in message
        assert ctl.handle is None
    finally:
        demo.close()


def test_an_infinite_count_from_the_page_is_refused_like_any_bad_value(tiny_model_dir):
    values = dict(method="sdpg", beta=0.05, alpha=1e-3, ref_mode="urkl", gate=True, beta_warmup=0, beta_decay=0,
                  lr=1e-4, group_size=math.inf, temperature=1.0, steps=3, model=str(tiny_model_dir),
                  data="embedded", val="embedded")
    with pytest.raises(ValueError, match=r"rollout\.group_size=inf is invalid.*--rollout\.group_size"):
        dashboard.config_from_controls(tiny_config(tiny_model_dir, ""), **values)


def test_cpu_run_that_cannot_fit_host_ram_is_refused_before_loading(tmp_path):
    """A 0.6B-shaped model (config only, no weights) with an in-range but absurd batch: 4096 prompts x 1024."""
    model_dir = tmp_path / "qwen3-0.6b-shape"
    Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True
                ).save_pretrained(model_dir)
    cfg = TrainConfig()
    cfg.model.name, cfg.model.device = str(model_dir), "cpu"
    cfg.rollout.prompts_per_step, cfg.rollout.group_size, cfg.rollout.max_new_tokens = 4096, 1024, 4096
    cfg.data.n_train, cfg.data.n_val = 50, 5
    cfg.run.run_dir = str(tmp_path / "run")
    with pytest.raises(MemoryPlanError) as err:
        build_trainer(cfg.validate(), RecordStream(None))
    message = str(err.value)
    assert "host RAM" in message and "step batch" in message and "Suggested: --rollout.prompts_per_step" in message


# ---------------- item 5: malformed rows fail at load, naming file, row and field ----------------
@pytest.mark.parametrize("bad,needle", [
    ({"prompt": [{"role": "system", "content": f"Be brief.{TEACHER_CONTEXT_TOKEN}answer: 2"},
                 {"role": "user", "content": "Q:1+1=\n"}], "reward_model": {"ground_truth": "2"}},
     "system message holds"),
    (_row(f"Q:1+1=\n{TEACHER_CONTEXT_TOKEN}answer: 2{TEACHER_CONTEXT_TOKEN}\n"), "2 times"),
    ('{"prompt": "Q:1+1=\\n", "reward_model": {"ground_truth": NaN}}', "reward_model.ground_truth is nan"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_malformed_rows_are_a_data_error_naming_file_and_row(tmp_path, bad, needle):
    path = _jsonl(tmp_path / "train.jsonl", [_good(0), bad, _good(2)])
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert str(path) in str(err.value) and "row 1 (line 2)" in str(err.value) and needle in str(err.value)


def test_a_deeply_nested_json_array_file_is_a_data_error(tmp_path):
    path = tmp_path / "train.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="nested too deeply"):
        load_rows(path)


def test_a_utf8_byte_order_mark_does_not_spoil_row_0(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(_good(i)) + "\n" for i in range(3)).encode())
    loaded = load_rows(path)
    assert [r.answer for r in loaded.rows] == ["1", "2", "3"] and loaded.skipped == 0


def test_a_200k_character_prompt_fails_at_load_naming_file_row_field_and_limit(tiny_model_dir, tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", [_good(0), _good(1), _row("Q:" + "1+" * 100_000 + "1=\n")])
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data__train=str(path))
    with pytest.raises(DataError) as err:
        build_trainer(cfg, RecordStream(None))
    message = str(err.value)
    assert str(path) in message and "row 2 (line 3)" in message and "prompt is 200" in message
    assert "rollout.max_prompt_tokens=512" in message


def test_rows_without_teacher_context_warn_and_count_for_a_teacher_method(tiny_model_dir, tmp_path, capsys):
    rows = [_good(0), _row("Q:1+1=\n"), _row("Q:2+1=\n", "3"), _good(3)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    records = RecordStream(tmp_path / "run")
    trainer = build_trainer(tiny_config(tiny_model_dir, tmp_path / "run", data__train=str(path)), records)
    trainer.verifier.close()
    (event,) = _events(records, "data_no_context")
    assert (event["split"], event["count"], event["rows"]) == ("train", 2, 4)
    assert "row 1 (line 2)" in event["message"] and "warning: data.train: 2 of 4 rows" in capsys.readouterr().out
    grpo = RecordStream(tmp_path / "grpo")  # a method without a teacher has nothing to warn about
    build_trainer(tiny_config(tiny_model_dir, tmp_path / "grpo", data__train=str(path), loss__method="grpo"),
                  grpo).verifier.close()
    assert not _events(grpo, "data_no_context")
    strict = tiny_config(tiny_model_dir, tmp_path / "strict", data__train=str(path), data__require_context=True)
    with pytest.raises(DataError, match="require_context"):
        build_trainer(strict, RecordStream(None))


# ---------------- item 6: skipped rows are counted where a person sees them ----------------
def test_skipped_rows_are_printed_and_recorded_as_an_event(tiny_model_dir, tmp_path, capsys):
    rows = [_good(0), {"prompt": "Q:1+1=\n"}, _good(2), "{not json", _good(4)]
    path = _jsonl(tmp_path / "train.jsonl", rows)
    records = RecordStream(tmp_path / "run")
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", data__train=str(path), data__skip_bad_rows=True)
    build_trainer(cfg, records).verifier.close()
    (event,) = _events(records, "data_rows_skipped")
    assert (event["split"], event["count"], event["kept"]) == ("train", 2, 3)
    assert "row 1 (line 2): reward_model.ground_truth is missing" in event["reasons"][0]
    assert "row 3 (line 4): not valid JSON" in event["reasons"][1]
    assert "skipped 2 bad rows" in capsys.readouterr().out
    assert _events(RecordStream.open(tmp_path / "run"), "data_rows_skipped")  # on disk for replays too


# ---------------- item 7: validation gaps and non-finite weights ----------------
@pytest.mark.parametrize("section,name,value", [
    ("optim", "warmup_steps", -5), ("optim", "lr", math.inf), ("optim", "betas", (1.5, 0.999)),
    ("optim", "betas", (math.nan, 0.999)), ("optim", "weight_decay", -1.0), ("rollout", "max_prompt_tokens", -1),
    ("data", "n_val", 0), ("reward", "overlong_penalty", math.nan), ("rollout", "temperature", math.inf),
    ("optim", "grad_clip", math.inf),
])
def test_settings_that_trained_silently_wrong_are_refused(section, name, value):
    cfg = TrainConfig()
    setattr(getattr(cfg, section), name, value)
    with pytest.raises(ValueError, match=rf"{section}\.{name}=.* is invalid: .*\(set by --{section}\.{name}\)"):
        cfg.validate()


def test_a_cuda_device_that_does_not_exist_is_refused_before_the_run_starts(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, model__device="cuda:99")
    with pytest.raises(ValueError, match=r"model\.device='cuda:99'"):
        RunHandle(cfg)


def _blow_up(trainer):
    """What `--optim.lr inf` did before validation refused it: the next optimizer step writes inf/NaN weights
    (no finite learning rate that validation accepts can do that in one step; the guard is the last line)."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = math.inf
    return trainer


def test_non_finite_weights_after_a_step_stop_the_run_and_are_never_saved(tiny_model_dir, tmp_path, monkeypatch):
    build = run_module.build_trainer
    monkeypatch.setattr(run_module, "build_trainer", lambda *a, **k: _blow_up(build(*a, **k)))
    handle = RunHandle(tiny_config(tiny_model_dir, tmp_path, run__save_every=1)).start()
    handle.join()
    assert handle.status == "crashed" and "step 1: the optimizer step left NaN/inf weights" in handle.error
    assert latest_checkpoint(tmp_path) is None  # nothing was saved after the bad step
    assert [m["step"] for m in RecordStream.open(tmp_path).metrics()] == [0]


def test_the_last_good_checkpoint_survives_a_blow_up(tiny_model_dir, tmp_path):
    records = RecordStream(tmp_path)
    trainer = build_trainer(tiny_config(tiny_model_dir, tmp_path), records)
    good = save_checkpoint(trainer, tmp_path)
    _blow_up(trainer)
    with pytest.raises(NonFiniteWeightsError, match="step 1"):
        trainer.train_step()
    trainer.verifier.close()
    assert latest_checkpoint(tmp_path) == good
    assert all(torch.isfinite(t).all() for t in load_file(good / "model" / "model.safetensors").values())


# ---------------- item 10: trust ----------------
class _RunsCode:
    def __reduce__(self):
        return (open, (os.environ["SDPG_TEST_MARKER"], "w"))


def test_resume_loads_the_training_state_without_running_pickled_code(tiny_model_dir, tmp_path, monkeypatch):
    records = RecordStream(tmp_path)
    trainer = build_trainer(tiny_config(tiny_model_dir, tmp_path), records)
    ckpt = save_checkpoint(trainer, tmp_path)
    marker = tmp_path / "code-ran"
    monkeypatch.setenv("SDPG_TEST_MARKER", str(marker))
    state = torch.load(ckpt / STATE_FILE, weights_only=True)
    torch.save({**state, "extra": _RunsCode()}, ckpt / STATE_FILE)
    with pytest.raises(ValueError, match="not loaded"):
        load_checkpoint(trainer, ckpt)
    trainer.verifier.close()
    assert not marker.exists()


@pytest.mark.parametrize("how", ["--resume", "--config"])
def test_trust_remote_code_is_never_taken_from_a_file(tmp_path, how, capsys):
    cfg = TrainConfig()
    cfg.model.trust_remote_code = True
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    target = str(tmp_path) if how == "--resume" else str(tmp_path / "config.json")
    assert config_from_args(build_parser().parse_args([how, target])).model.trust_remote_code is False
    assert "ignored" in capsys.readouterr().err
    flagged = config_from_args(build_parser().parse_args([how, target, "--model.trust_remote_code"]))
    assert flagged.model.trust_remote_code is True  # the user's own flag still allows it


def test_an_unreachable_hub_fails_fast_with_a_clear_message(tmp_path):
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(ModelConfig(name="sdpg-lab-tests/no-such-model"))
    assert time.monotonic() - start < 15  # today's main retried for ~56 s here
    assert "sdpg-lab-tests/no-such-model" in str(err.value)


def test_offline_mode_is_honoured_at_once(monkeypatch):
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)  # what HF_HUB_OFFLINE=1 sets at import
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match=r"offline mode is on \(HF_HUB_OFFLINE\)"):
        load_model_and_tokenizer(ModelConfig(name="sdpg-lab-tests/no-such-model"))
    assert time.monotonic() - start < 5


def test_resume_refuses_changes_that_cannot_take_effect_and_records_the_rest(tiny_model_dir, tmp_path):
    first = RunHandle(tiny_config(tiny_model_dir, tmp_path, run__steps=1)).start()
    first.join()
    saved = (tmp_path / "config.json").read_text()
    for key, value in (("optim__lr", 1e-3), ("optim__betas", (0.5, 0.9)), ("run__seed", 3), ("data__n_train", 41)):
        with pytest.raises(ValueError, match=rf"cannot resume .* --{key.replace('__', '.')} "):
            RunHandle(tiny_config(tiny_model_dir, tmp_path, run__steps=2, **{key: value}), resume=True)
    assert (tmp_path / "config.json").read_text() == saved  # no claim of a setting that did not take effect
    resumed = RunHandle(tiny_config(tiny_model_dir, tmp_path, run__steps=2, optim__grad_clip=0.5), resume=True)
    resumed.start().join()
    assert resumed.status == "finished", resumed.error
    (event,) = _events(RecordStream.open(tmp_path), "resume_changes")
    assert event["changes"] == {"run.steps": [1, 2], "optim.grad_clip": [1.0, 0.5]}


# ---------------- issue 25, items 9, 10, 12, 13: data and settings ----------------
def test_a_lone_surrogate_is_a_bad_row_naming_file_row_and_field(tmp_path):
    bad = json.dumps(_row("Q:1+\ud800=\n"), ensure_ascii=True)  # JSON's "\ud800" escape, as an editor may write it
    path = _jsonl(tmp_path / "train.jsonl", [_good(0), bad, _good(2)])
    with pytest.raises(DataError) as err:
        load_rows(path)
    assert f"{path} row 1 (line 2): prompt holds '\\ud800' at character 4, a lone surrogate" in str(err.value)
    loaded = load_rows(path, skip_bad_rows=True)
    assert [r.answer for r in loaded.rows] == ["1", "3"] and loaded.skipped == 1


def test_a_jsonl_file_whose_first_line_is_an_array_loses_only_that_line(tmp_path):
    path = _jsonl(tmp_path / "train.jsonl", ["[1, 2]", _good(1), _good(2)])
    with pytest.raises(DataError, match=r"row 0 \(line 1\): row must be an object, got list"):
        load_rows(path)
    loaded = load_rows(path, skip_bad_rows=True)
    assert [r.answer for r in loaded.rows] == ["2", "3"] and loaded.skipped == 1


@pytest.mark.parametrize("value", [1e-40, 1e-5, 0.0])
def test_a_vanishing_temperature_is_refused_naming_the_bound(value):
    cfg = TrainConfig()
    cfg.rollout.temperature = value
    with pytest.raises(ValueError, match=r"rollout.temperature=.* must be a finite number in \[0.001, 100\]"):
        cfg.validate()


def test_responses_longer_than_the_model_positions_are_refused_naming_both_numbers(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, rollout__max_new_tokens=250)
    with pytest.raises(ValueError) as err:
        build_trainer(cfg, RecordStream(tmp_path), progress=False)
    message = str(err.value)
    assert "rollout.max_new_tokens=250 after the longest prompt (" in message
    assert "max_position_embeddings=256" in message and "Lower --rollout.max_new_tokens to at most" in message
