import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from types import SimpleNamespace
from pathlib import Path

import pytest
import torch

import sdpg.embedded.cache as cache
import sdpg.embedded.warmstart as warmstart
from sdpg.config import DataConfig, ModelConfig
from lab.viewmodel import RunView
from lab.warmstart import warmstart_html
from sdpg.data import render_prompts
from sdpg.embedded.cache import embedded_entry, embedded_key, embedded_settings, read_warmstart_report
from sdpg.embedded.model import TinyModelConfig
from sdpg.embedded.tokenizer import build_char_tokenizer
from sdpg.embedded.warmstart import WarmStartConfig, evaluate, warm_start
from sdpg.models import load_model_and_tokenizer
from sdpg.records import RecordStream
from sdpg.run import warmstart_recorder
from sdpg.tasks.addition import make_row, target_text
from sdpg.tasks import CONTEXTS, TASKS

TINY = WarmStartConfig(
    digits=(1, 1), steps=3, batch_size=8, warmup_steps=1, eval_prompts=4, eval_samples=2,
    model=TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16, intermediate_size=64),
)


def weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])  # (P,)


def test_report_and_model_state():
    model, tokenizer, report = warm_start(TINY, progress=False)
    assert not model.training
    assert report["settings"]["steps"] == 3 and report["settings"]["model"]["num_layers"] == 1
    for key in ("eval/student_pass@1", "eval/teacher_pass@1", "eval/student_greedy", "eval/teacher_greedy"):
        assert 0.0 <= report[key] <= 1.0
    assert report["time/warm_start_s"] >= report["time/train_s"] >= 0
    json.dumps(report)


def test_reproducible_by_seed_and_leaves_caller_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)  # (3,)
    torch.manual_seed(123)
    first, _, report_a = warm_start(TINY, progress=False)
    assert torch.equal(torch.rand(3), expected)
    second, _, report_b = warm_start(TINY, progress=False)
    other, _, _ = warm_start(replace(TINY, seed=1), progress=False)
    assert torch.equal(weights(first), weights(second))
    assert report_a["eval/student_pass@1"] == report_b["eval/student_pass@1"]
    assert not torch.equal(weights(first), weights(other))


def test_runs_all_steps_unless_the_stopping_check_passes():
    _, _, full = warm_start(replace(TINY, steps=4, check_every=2, stop_at=1.0), progress=False)
    assert full["train/steps"] == 4 and full["train/stop_check"] is None
    _, _, early = warm_start(replace(TINY, steps=4, check_every=2, stop_at=0.0), progress=False)
    assert early["train/steps"] == 2 and 0.0 <= early["train/stop_check"] <= 1.0


def test_training_lowers_the_loss_below_uniform_guessing():
    cfg = replace(TINY, steps=40, batch_size=16, warmup_steps=5)
    model, tokenizer, report = warm_start(cfg, progress=False)
    # The response format (\boxed{, }, EOS) is fully predictable, so the loss must fall well below log V.
    assert report["train/loss_final"] < 0.5 * math.log(len(tokenizer))


def test_teacher_forcing_batch_masks_exactly_the_response():
    tokenizer = build_char_tokenizer()
    input_ids, loss_mask = warmstart._teacher_forcing_batch(tokenizer, ["Q:1+2\n", "Q:10+20\n"],
                                                           [target_text("3"), target_text("30")])
    assert input_ids.shape == (2, len("Q:10+20\nA:\\boxed{30}") + 1)
    assert tokenizer.decode(input_ids[0]) == "Q:1+2\nA:\\boxed{3}<eos><pad><pad><pad>"
    assert tokenizer.decode(input_ids[0][loss_mask[0]]) == "\\boxed{3}<eos>"
    assert tokenizer.decode(input_ids[1][loss_mask[1]]) == "\\boxed{30}<eos>"


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = WarmStartConfig(steps=10, warmup_steps=2)
    factors = [warmstart._lr_factor(step, cfg) for step in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[-1] == pytest.approx(0.0) and factors[6] == pytest.approx(0.5)


class AlwaysAnswers:
    """A stand-in policy that answers \\boxed{<answer>} to every prompt."""

    device = torch.device("cpu")

    def __init__(self, tokenizer, answer):
        self.response = tokenizer(target_text(answer) + "<eos>", add_special_tokens=False)["input_ids"]

    def generate(self, input_ids, attention_mask, max_new_tokens, num_return_sequences, **sampling):
        response = torch.tensor(self.response).expand(input_ids.shape[0], -1)  # (b, T)
        return torch.cat([input_ids, response], 1).repeat_interleave(num_return_sequences, 0)  # (b*samples, N)


def test_evaluate_scores_boxed_answers_against_gold():
    tokenizer = build_char_tokenizer()
    rows = [make_row(2, 3), make_row(1, 1), make_row(4, 1), make_row(3, 3)]
    figures = evaluate(AlwaysAnswers(tokenizer, "5"), tokenizer, rows, samples=3, batch_size=6)
    assert figures == {"eval/student_pass@1": 0.5, "eval/student_greedy": 0.5,
                       "eval/teacher_pass@1": 0.5, "eval/teacher_greedy": 0.5}


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="hinted_fraction"):
        warm_start(WarmStartConfig(hinted_fraction=1.5), progress=False)
    with pytest.raises(ValueError, match="steps"):
        warm_start(WarmStartConfig(steps=0), progress=False)
    with pytest.raises(ValueError, match="stop_at"):
        warm_start(WarmStartConfig(stop_at=-0.1), progress=False)
    with pytest.raises(ValueError, match="check_every"):
        warm_start(WarmStartConfig(check_every=0), progress=False)


def test_embedded_model_is_cached_and_reused(tmp_path, monkeypatch):
    model, tokenizer = load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path, warm_cfg=TINY, progress=False)
    entries = entries_in(tmp_path)
    assert len(entries) == 1 and read_warmstart_report(entries[0])["settings"]["steps"] == TINY.steps

    def no_training(*args, **kwargs):
        raise AssertionError("the cached entry should have been loaded")

    monkeypatch.setattr(cache, "warm_start", no_training)
    again, again_tok = load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path, warm_cfg=TINY, progress=False)
    ids = torch.tensor([tokenizer(render_prompts(tokenizer, ["Q:1+2\n"])[0])["input_ids"]])  # (1, N)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert again_tok.padding_side == "left" and render_prompts(again_tok, ["x"]) == ["xA:"]


def entries_in(cache: Path) -> list[Path]:
    """Cache entries and staging folders (everything but the builders' lock files)."""
    return [p for p in cache.iterdir() if not p.name.endswith(".lock")]


def test_two_builders_of_one_entry_train_once_and_stale_staging_goes(tmp_path, monkeypatch):
    stale = tmp_path / f".embedded-{embedded_key(TINY)}-killed"
    stale.mkdir()
    real, calls = warmstart.warm_start, []

    def counted(cfg, progress, **kwargs):
        calls.append(cfg)
        return real(cfg, progress=progress, **kwargs)

    monkeypatch.setattr(cache, "warm_start", counted)
    with ThreadPoolExecutor(2) as pool:
        entries = list(pool.map(lambda _: embedded_entry(cache_dir=tmp_path, warm_cfg=TINY, progress=False), range(2)))
    assert len(calls) == 1 and entries[0] == entries[1]
    assert entries_in(tmp_path) == [entries[0]]


def test_cache_key_follows_settings_and_task_digits():
    assert embedded_key(TINY) == embedded_key(replace(TINY))
    assert embedded_key(replace(TINY, seed=1)) != embedded_key(TINY)
    assert embedded_key(replace(TINY, model=replace(TINY.model, num_layers=2))) != embedded_key(TINY)
    from_data = embedded_settings(TINY, DataConfig(digits=(2, 1)))
    assert from_data == replace(TINY, digits=(2, 1)) and embedded_settings(TINY, None) == TINY


def test_cache_key_covers_the_task_and_keeps_the_add_tasks_key():
    keys = {name: embedded_key(replace(TINY, task=name)) for name in TASKS}
    assert len(set(keys.values())) == len(TASKS)
    assert keys["add"] == embedded_key(TINY)
    # a run on a task warm-starts with that task's own settings
    sparse = embedded_settings(None, DataConfig(task="sparse"))
    assert sparse == replace(WarmStartConfig(), task="sparse", **TASKS["sparse"].warm_start)
    assert embedded_settings(None, DataConfig()) == WarmStartConfig()
    # the tokenizer's characters are in the key: a task needing a new symbol gets a new entry
    assert "CHARS" in embedded_key.__code__.co_names


def test_warm_start_teaches_the_tasks_worked_response_with_each_context_variant_in_turn(monkeypatch):
    seen = []
    real = warmstart._teacher_forcing_batch

    def spy(tokenizer, texts, targets):
        seen.append((texts, targets))
        return real(tokenizer, texts, targets)

    monkeypatch.setattr(warmstart, "_teacher_forcing_batch", spy)
    cfg = replace(TINY, task="reasoning", steps=1, batch_size=6, hinted_fraction=0.5, eval_prompts=2, eval_samples=1)
    warmstart.warm_start(cfg, progress=False)
    problems = TASKS["reasoning"].problems(cfg.batch_size + cfg.check_prompts, seed=cfg.seed, split="train")[:6]
    (hinted, hinted_targets), (plain, plain_targets) = seen
    assert TASKS["reasoning"].warm_contexts == ("full", "answer", "solution")
    assert hinted == [p.question + CONTEXTS[v](p) for p, v in zip(problems, ("full", "answer", "solution"))]
    assert plain == [p.question for p in problems[3:]]
    assert hinted_targets + plain_targets == [p.response for p in problems]


def test_failed_warm_start_leaves_no_cache_entry(tmp_path, monkeypatch):
    def crash(cfg, progress, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(cache, "warm_start", crash)
    with pytest.raises(RuntimeError, match="interrupted"):
        load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path, warm_cfg=TINY, progress=False)
    assert entries_in(tmp_path) == []


def test_crash_while_saving_leaves_no_cache_entry(tmp_path, monkeypatch):
    real = warmstart.warm_start

    def save_fails(cfg, progress, **kwargs):
        model, tokenizer, report = real(cfg, progress=progress, **kwargs)
        report["unserialisable"] = object()
        return model, tokenizer, report

    monkeypatch.setattr(cache, "warm_start", save_fails)
    with pytest.raises(TypeError):
        load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path, warm_cfg=TINY, progress=False)
    assert entries_in(tmp_path) == []


def test_warm_start_streams_its_progress_into_the_record_stream_and_a_cached_start_says_so(tmp_path, capsys):
    cfg = replace(TINY, steps=25, stop_at=0.99, check_every=10, check_prompts=4)
    records = RecordStream(tmp_path / "run")
    load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path / "cache", warm_cfg=cfg, progress=False,
                             on_warmstart=warmstart_recorder(records))
    events = [e for e in records.events() if e["event"] == "warmstart"]
    assert [e["step"] for e in events] == [1, 10, 20, 25] and all(e["steps"] == 25 for e in events)
    assert [("check" in e) for e in events] == [False, True, True, False]
    assert all(0 <= e["check"] <= 1 and e["target"] == 0.99 for e in events if "check" in e)
    assert all(math.isfinite(e["loss"]) for e in events) and events[-1]["elapsed_s"] >= events[0]["elapsed_s"]
    live = warmstart_html(events[:-1])
    assert "step 20 / 25" in live and "ETA" in live and "<svg" in live and "skill check" in live
    done = warmstart_html(events)  # the last step: the run trains now, the card is one line
    assert "warm start done — 25 steps in" in done and "ETA" not in done and "<svg" not in done

    again = RecordStream(tmp_path / "again")
    load_model_and_tokenizer(ModelConfig(), cache_dir=tmp_path / "cache", warm_cfg=cfg, progress=True,
                             on_warmstart=warmstart_recorder(again))
    (cached,) = [e for e in again.events() if e["event"] == "warmstart"]
    assert cached["cached"] and cached["steps"] == 25
    assert capsys.readouterr().out.count("embedded model: cached warm start (25 steps") == 1
    assert "cached warm start (25 steps" in warmstart_html([cached])


def test_the_warmstart_card_collapses_into_one_done_line_once_the_skill_check_stops_it(tmp_path):
    records = RecordStream(tmp_path / "run")
    warm_start(replace(TINY, steps=6, check_every=2, stop_at=0.0), progress=False, on_step=warmstart_recorder(records))
    events = records.events()
    assert [(e["step"], "check" in e) for e in events] == [(1, False), (2, True)]  # stopped at the first check
    assert "step 1 / 6" in warmstart_html(events[:1]) and "ETA" in warmstart_html(events[:1])
    done = warmstart_html(events)
    assert "warm start done — 2 of 6 steps (skill check" in done and "reached its target 0.00" in done
    assert "ETA" not in done and "<svg" not in done and done.count("<div") == 1
    handle = SimpleNamespace(records=records, status="running", step=1, total_steps=3, run_dir=tmp_path / "run",
                             error=None)
    card = RunView(handle=handle).status_card()  # what the page and the notebook show while the run trains
    assert "RUNNING" in card and "warm start done" in card and "ETA" not in card
