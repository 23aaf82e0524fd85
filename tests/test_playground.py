"""The privileged-context playground on the tiny model: variants, exact per-token numbers, the gap table,
and asking a live run between its steps."""
import threading
import time

import pytest
import torch

from conftest import tiny_config
from sdpg.data import PromptRow, render_prompts, teacher_context
from sdpg.forward import lm_head_weight, logits_self_distill
from sdpg.models import load_model_and_tokenizer
from sdpg.playground import (SANITY, Subject, context_gap, context_variants, load_subject, probe_response,
                             recorded_response_ids, response_ids)
from sdpg.reward import MathVerifier, Verdict
from sdpg.run import RunHandle
from sdpg.tasks.addition import make_row


@pytest.fixture(scope="module")
def subject(tiny_model_dir):
    cfg = tiny_config(tiny_model_dir, "")
    cfg.loss.beta, cfg.loss.beta_warmup, cfg.loss.beta_decay = 0.05, 0, 0
    model, tokenizer = load_model_and_tokenizer(cfg.model)
    return Subject(model, tokenizer, cfg)


def test_embedded_variants_come_from_the_hint_structure():
    row = make_row(758, 467)
    variants = {v.name: v.context for v in context_variants(row, "Hint: it is odd")}
    assert variants == {"real hint": "Hint: 1225 (8+7=15 5+6+1=12 7+4+1=12)\n", "no hint": "Hint: \n",
                        "answer only": "Hint: 1225\n", "solution only": "Hint: (8+7=15 5+6+1=12 7+4+1=12)\n",
                        "wrong answer": "Hint: 1226\n", SANITY: "", "free text": "Hint: it is odd\n"}


def test_real_data_variants_use_the_templates_and_skip_what_cannot_be_derived():
    row = PromptRow("Solve x.", teacher_context("42", "add six to 36"), "42")
    variants = {v.name: v.context for v in context_variants(row)}
    assert variants["answer only"] == teacher_context("42")
    assert "add six to 36" in variants["solution only"] and "42" not in variants["solution only"]
    assert variants["wrong answer"] == teacher_context("43") and variants[SANITY] == ""
    bare = {v.name for v in context_variants(PromptRow("Simplify.", "", "\\frac{1}{2}"))}
    assert bare == {"answer only", SANITY}


def test_probe_gives_exact_zero_kl_for_the_own_prompt_and_the_training_numbers_for_others(subject):
    row = make_row(7, 8)
    variants = context_variants(row)
    out = probe_response(subject, row.prompt, "\\boxed{15}", variants, advantage=0.8)
    ids = response_ids(subject.tokenizer, "\\boxed{15}")
    assert len(out["tokens"]) == len(ids) == len("\\boxed{15}") + 1  # and EOS
    by_name = {v["name"]: v for v in out["variants"]}
    sanity = by_name[SANITY]
    assert all(k == 0.0 for k in sanity["kl"]) and sanity["teacher_logp"] == pytest.approx(sanity["student_logp"], abs=1e-6)

    hint = by_name["real hint"]
    assert min(hint["kl"]) > 0
    # the same KL through materialised logits, from separately computed hidden states
    model, tok = subject.model, subject.tokenizer
    resp = torch.tensor([ids])  # (1, T)
    with torch.no_grad():
        def hidden(text):
            enc = tok(render_prompts(tok, [text]), return_tensors="pt", add_special_tokens=False)
            return model.base_model(input_ids=torch.cat([enc.input_ids, resp], 1)).last_hidden_state[0, enc.input_ids.shape[1] - 1:-1]
        kl, logp, _ = logits_self_distill(hidden(row.prompt), hidden(row.teacher_prompt), lm_head_weight(model), resp[0])
    assert hint["kl"] == pytest.approx(kl.tolist(), abs=1e-5)
    assert hint["student_logp"] == pytest.approx(logp.tolist(), abs=1e-5)
    for v in out["variants"]:
        adv = [k - (p - q) for k, p, q in zip(v["kl"], v["student_logp"], v["teacher_logp"])]
        assert v["adv_dist"] == pytest.approx(adv, abs=1e-6)
        assert v["weight_sdpg"] == pytest.approx([0.8 + 0.05 * a for a in adv], abs=1e-6)  # A > 0: the gate passes
        assert v["loss"]["loss/distill"] == pytest.approx(0.05 * sum(v["kl"]) / len(ids), rel=1e-5)
        assert len(v["teacher_topk"]) == len(ids) and all(len(top) == 5 for top in v["teacher_topk"])
    assert by_name[SANITY]["loss"]["loss/distill"] == 0.0


def test_a_negative_advantage_closes_the_gate(subject):
    row = make_row(3, 4)
    out = probe_response(subject, row.prompt, "\\boxed{8}", context_variants(row)[:1], advantage=-0.5)
    v = out["variants"][0]
    assert v["weight_sdpg"] == pytest.approx([-0.5] * len(v["kl"])) and v["loss"]["loss/distill"] == 0.0


def test_gap_table_ranks_every_context(subject):
    rows = [make_row(a, b) for a, b in ((1, 2), (3, 5), (4, 4))]
    with MathVerifier(timeout_s=10) as verifier:
        table = context_gap(subject, rows, verifier, samples=2, seed=0)
    names = [r["variant"] for r in table]
    assert sorted(names) == sorted(v.name for v in context_variants(rows[0]))
    gaps = [r["gap"] for r in table]
    assert gaps == sorted(gaps, reverse=True)
    for r in table:
        assert r["gap"] == pytest.approx(r["teacher_pass@1"] - r["student_pass@1"])
        assert 0 <= r["teacher_pass@1"] <= 1 and r["problems"] == 3 and r["samples"] == 2
    by_name = {r["variant"]: r for r in table}
    assert by_name[SANITY]["kl_mean"] == 0.0 and by_name["real hint"]["kl_mean"] > 0


class _CodeParity:
    """A stand-in verifier for the random test model, which never boxes an answer: "correct" when a sampled text's
    character codes add up to an even number, so pass rates move with the draw and the draw alone."""

    def score(self, texts, answers):
        even = [sum(map(ord, t)) % 2 == 0 for t in texts]
        return [Verdict(correct=e, reward=float(e), status="ok", extracted=t) for t, e in zip(texts, even)]


def test_every_context_samples_from_the_same_draw_so_the_sanity_gap_is_exactly_zero(subject):
    rows = [make_row(a, b) for a, b in ((1, 2), (3, 5), (4, 4), (6, 1))]
    table = {r["variant"]: r for r in context_gap(subject, rows, _CodeParity(), samples=4, seed=3)}
    sanity = table[SANITY]
    assert 0 < sanity["student_pass@1"] < 1  # the stand-in judges the draw: this is no trivial 0 == 0
    assert sanity["teacher_pass@1"] == sanity["student_pass@1"] and sanity["gap"] == 0.0


def test_live_run_answers_between_steps_and_a_checkpoint_answers_after(tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path / "run", run__steps=30)
    handle = RunHandle(cfg).start()
    try:
        deadline = time.monotonic() + 90
        while handle.step < 1:
            assert handle.status != "crashed" and time.monotonic() < deadline, handle.error
            time.sleep(0.1)

        def ask(trainer):
            before = trainer.step
            time.sleep(0.5)  # a racing update would move the step meanwhile
            row = make_row(2, 3)
            out = probe_response(Subject.from_trainer(trainer), row.prompt, "\\boxed{5}", context_variants(row))
            return before, trainer.step, threading.current_thread().name, out

        before, after, thread, out = handle.call_between_steps(ask, timeout=60)
        assert before == after == out["step"] >= 1 and thread.startswith("sdpg-run-")
    finally:
        handle.stop(wait=True, timeout=60)
    assert handle.call_between_steps(lambda t: threading.current_thread().name) == threading.current_thread().name
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))[-1]
    loaded = load_subject(ckpt)
    assert loaded.step == handle.step
    row = make_row(2, 3)
    again = probe_response(loaded, row.prompt, "\\boxed{5}", context_variants(row))
    live = handle.call_between_steps(lambda t: probe_response(Subject.from_trainer(t), row.prompt, "\\boxed{5}",
                                                              context_variants(row)))
    assert again["variants"][0]["kl"] == pytest.approx(live["variants"][0]["kl"], abs=1e-5)
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        load_subject(tmp_path)


def test_a_recorded_response_gives_its_sampled_ids_not_its_text_re_encoded(tmp_path):
    """With Qwen's BPE, a sample may split a word the tokenizer would merge: the playground must probe the sampled
    ids (carried by the records live and read back from disk), and re-encodes the text only for old records."""
    from sdpg.record_build import token_record
    from sdpg.records import RecordStream
    from sdpg.vocab import token_strings
    from tests.fixtures.qwen_vocab import QWEN3_VOCAB, qwen_tokenizer

    tok = qwen_tokenizer()
    pieces = [" the", " ans", "wer", " is", " 4", "2"]
    sampled = [i for p in pieces for i in tok(p, add_special_tokens=False).input_ids] + [tok.eos_token_id]
    text = tok.decode(sampled[:-1])
    assert text == " the answer is 42"
    assert response_ids(tok, text) != sampled, "the fixture needs a text whose re-encoding differs from the sample"

    n, hidden = len(sampled), 8
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(QWEN3_VOCAB, hidden, generator=gen)  # (V, H)
    h = torch.randn(2, n, hidden, generator=gen)  # (2, n, H) student, teacher
    zeros = torch.zeros(n)  # (n,)
    record = token_record(tok, weight, 1.0, h[0], h[1], torch.tensor(sampled), kl=zeros, logp=zeros - 1.0,
                          entropy=zeros, old_logp=zeros - 1.0)
    response = {"text": text, "reward": 1.0, "correct": True, "status": "ok", "advantage": 1.0, "gate": True, **record}
    stream = RecordStream(tmp_path / "run")
    stream.emit_rollouts(1, [{"group": 0, "prompt": "Q", "context": "C", "answer": "42", "responses": [response]}])

    live = stream.rollouts(1)[0]["responses"][0]
    replayed = RecordStream.open(tmp_path / "run").rollouts(1)[0]["responses"][0]
    assert recorded_response_ids(tok, live) == recorded_response_ids(tok, replayed) == sampled
    old = {"text": text, "tokens": token_strings(tok, sampled)}  # a record from before ids were kept
    assert recorded_response_ids(tok, old) == response_ids(tok, text, eos=False) != sampled[:-1]
