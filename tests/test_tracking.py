"""`run.report_to`: the metric stream mirrored to TensorBoard and read back; off by default; a missing package
is refused up front with the pip command."""
import importlib.util

import pytest

from conftest import tiny_config
from sdpg import tracking
from sdpg.records import RecordStream
from sdpg.run import RunHandle


def test_tensorboard_logs_hold_the_recorded_metrics(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is optional (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = tiny_config(tiny_model_dir, tmp_path / "run", run__report_to="tensorboard", run__eval_every=2)
    handle = RunHandle(cfg).start()
    handle.join(timeout=120)
    assert handle.status == "finished", handle.error
    logs = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    rows = RecordStream.open(tmp_path / "run").metrics()
    for key in ("reward/mean", "loss/total", "kl/distill_mean", "eval/pass@1"):
        recorded = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), float)]
        logged = [(e.step, e.value) for e in logs.Scalars(key)]
        assert [s for s, _ in logged] == [s for s, _ in recorded] and recorded
        assert [v for _, v in logged] == pytest.approx([v for _, v in recorded], rel=1e-6)
    assert "adv/values" not in logs.Tags()["scalars"]  # lists stay in the records


def test_tracking_is_off_by_default(tiny_model_dir, tmp_path):
    handle = RunHandle(tiny_config(tiny_model_dir, tmp_path / "run", run__steps=1)).start()
    handle.join(timeout=120)
    assert handle.status == "finished" and not (tmp_path / "run" / "tensorboard").exists()


def test_a_missing_tracker_package_is_refused_with_the_pip_command(tiny_model_dir, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "trackio" else real(name))
    with pytest.raises(ValueError, match=r"run.report_to='trackio' is invalid: needs the 'trackio' package.*pip install trackio"):
        tiny_config(tiny_model_dir, "", run__report_to="trackio")
    with pytest.raises(ValueError, match=r"run.report_to='mlflow' is invalid"):
        tiny_config(tiny_model_dir, "", run__report_to="mlflow")
