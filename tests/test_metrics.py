"""The metric registry against what the trainer really writes and what the dashboard draws; a GRPO run's teacher."""
import pytest

from conftest import tiny_config
from lab.curves import PANELS, curves_figure
from sdpg.methods import METHODS
from sdpg.metrics import COMBINE, LIVE_TEACHER_KEYS, METRICS, metric
from sdpg.records import RecordStream
from sdpg.run import RunHandle, build_trainer


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_key_a_real_run_writes_is_registered(tiny_model_dir, tmp_path, method):
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method=method, loss__beta=0.5, run__steps=1, run__eval_every=1,
                      reward__overlong_buffer=6, optim__mini_batch_prompts=1)
    handle = RunHandle(cfg).start()
    handle.join()
    assert handle.status == "finished", handle.error
    rows = RecordStream.open(tmp_path).metrics()
    written = {key for row in rows for key in row} - {"step", "time"}
    assert "eval/pass@2" in written and "optim/updates" in written
    for key in sorted(written):
        metric(key)  # raises KeyError naming an unregistered key
    assert {"kl/distill_mean", "kl/distill_gated_mean"} <= written  # measured on the recorded groups for grpo
    assert ("gate/tokens" in written) == (method != "grpo")  # OPSD-fork averages its weights over its gated tokens


def test_unregistered_keys_are_named():
    with pytest.raises(KeyError, match="'loss/new_term' is not registered"):
        metric("loss/new_term")
    assert metric("eval/pass@16").key == "eval/pass@{k}"


def test_every_registered_rule_is_known_and_every_panel_draws_registered_keys():
    assert all(m.combine in COMBINE and m.meaning for m in METRICS.values())
    for panel in PANELS:
        for s in panel.series:
            metric(s.key.replace("@k", "@2"))


def test_a_grpo_run_runs_its_teacher_on_the_recorded_group_only_and_measures_the_kl_there(tiny_model_dir, tmp_path):
    rows_seen = []
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method="grpo", run__record_groups=1, optim__micro_batch=64)
    trainer = build_trainer(cfg, RecordStream(tmp_path), progress=False)
    real = trainer.forwards.hidden
    trainer.forwards.hidden = lambda ids, *rest: rows_seen.append((ids.shape[0], ids.shape[1])) or real(ids, *rest)
    try:
        metrics = trainer.train_step()
    finally:
        trainer.verifier.close()
    # one micro-batch of 12 rows: the teacher's (wider) prompts on the recorded group's 4 rows only, the student on 12
    student_width = min(width for _, width in rows_seen)
    assert sorted(rows_seen) == sorted([(4, max(w for _, w in rows_seen)), (12, student_width)])
    (group,) = trainer.records.rollouts(step=1)
    resp = group["responses"][0]
    assert len(resp["kl"]) == len(resp["tokens"]) > 0 and sum(resp["kl"]) > 0 and resp["teacher_topk"]
    recorded = [x for r in group["responses"] for x in r["kl"]]
    assert metrics["kl/distill_mean"] == pytest.approx(sum(recorded) / len(recorded))  # the recorded group's KL
    assert "gate/tokens" not in metrics
    without = {k: v for k, v in metrics.items() if k not in LIVE_TEACHER_KEYS}
    curves_figure([{"step": 1, **without}], cfg.to_dict())  # a run without records: the KL panel is just empty


def test_gated_sdpg_runs_its_teacher_on_gated_and_recorded_rows_only_and_trains_the_same(tiny_model_dir, tmp_path,
                                                                                         monkeypatch):
    import torch

    import sdpg.step

    def one_step(run_dir):
        torch.manual_seed(0)
        cfg = tiny_config(tiny_model_dir, run_dir, loss__method="sdpg", loss__beta=0.5, run__record_groups=1,
                          optim__micro_batch=64, reward__overlong_buffer=6)
        trainer = build_trainer(cfg, RecordStream(run_dir), progress=False)
        teacher_widths, real = [], trainer.forwards.hidden
        trainer.forwards.hidden = lambda ids, *rest: teacher_widths.append(ids.shape) or real(ids, *rest)
        try:
            metrics = trainer.train_step()
        finally:
            trainer.verifier.close()
        return metrics, [p.detach().clone() for p in trainer.model.parameters()], teacher_widths

    gated, weights, seen = one_step(tmp_path / "gated")
    with monkeypatch.context() as m:  # the teacher on every row, as before
        m.setattr(sdpg.step, "teacher_rows", lambda mb, ctx: list(range(mb.response_ids.shape[0])))
        everywhere, weights_everywhere, seen_everywhere = one_step(tmp_path / "everywhere")
    adv = gated["adv/values"]
    rows = {i for i, a in enumerate(adv) if a > 0} | set(range(len(adv) // 3))  # gated rows and the recorded group
    assert 0 < sum(a > 0 for a in adv) and len(rows) < len(adv)  # the test needs rows with and without the teacher
    teacher_pass = max(seen, key=lambda shape: shape[1])  # the privileged prompt is the wider one
    assert teacher_pass[0] == len(rows) and max(seen_everywhere, key=lambda s: s[1])[0] == len(adv)
    for key in ("loss/total", "loss/distill", "loss/pg", "kl/distill_gated_mean", "gate/tokens", "gate/fraction",
                "grad/norm", "entropy/mean"):
        assert gated[key] == pytest.approx(everywhere[key], rel=1e-6, abs=1e-7), key
    assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(weights, weights_everywhere))
    (group,) = RecordStream.open(tmp_path / "gated").rollouts(step=1)
    recorded = [x for r in group["responses"] for x in r["kl"]]
    assert gated["kl/distill_mean"] == pytest.approx(sum(recorded) / len(recorded))  # over the recorded group


def test_every_registered_key_is_written_by_a_real_step(tiny_model_dir, tmp_path):
    """A key in the registry that no trainer writes would be drawn as an empty curve forever: one engine step (and an
    evaluation) per method must write every registered key between them."""
    written = set()
    for method in sorted(METHODS):
        cfg = tiny_config(tiny_model_dir, tmp_path / method, loss__method=method, loss__beta=0.5, loss__alpha=0.01,
                          loss__clip_c=3.0, optim__mini_batch_prompts=1)
        trainer = build_trainer(cfg, RecordStream(tmp_path / method), progress=False)
        try:
            written |= {metric(key).key for key in {**trainer.train_step(), **trainer.evaluate()}}
        finally:
            trainer.verifier.close()
    assert set(METRICS) - written == set()
