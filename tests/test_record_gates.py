"""The records' gate column is the method's own gate (issue 24: methods own their facts), not SDPG's rule for all."""
import pytest

from conftest import tiny_config
from sdpg.methods import get_method
from sdpg.records import RecordStream
from sdpg.run import build_trainer
from sdpg.step import record_gates

ADV = [0.5, -0.5, 0.5, 0.0]
CORRECT = [True, True, False, False]


@pytest.mark.parametrize("method, gate, want", [
    ("opsd_fork", True, [True, False, True, False]),  # its loss picks correct answers itself; no gate of its own
    ("sdpg", True, [True, False, True, False]),      # positive advantage
    ("sdpg", False, [True, True, True, True]),       # gate off: the teacher's KL counts on every response
    ("grpo", True, [True, False, True, False]),      # no gate of its own: what SDPG's gate would pass
])
def test_record_gates_follow_the_method(method, gate, want, tiny_model_dir, tmp_path):
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method=method, loss__gate=gate)
    assert record_gates(get_method(method), cfg.loss, ADV, CORRECT) == want


@pytest.mark.parametrize("gate", [True, False])
def test_sdpg_run_records_the_gate_it_trained_with(gate, tiny_model_dir, tmp_path):
    """Real SDPG steps: with the gate on a response passes when A > 0; with it off (the teacher's KL counts on every
    response) every response passes."""
    cfg = tiny_config(tiny_model_dir, tmp_path, loss__method="sdpg", loss__gate=gate, run__steps=2)
    trainer = build_trainer(cfg, RecordStream(tmp_path), progress=False)
    for _ in range(2):
        trainer.train_step()
    trainer.verifier.close()
    responses = [r for step in (1, 2) for g in trainer.records.rollouts(step=step) for r in g["responses"]]
    assert responses
    assert [r["gate"] for r in responses] == [r["advantage"] > 0 or not gate for r in responses]
