"""Pins the training step: short real runs on the tiny model, every metric of every step against golden values.

The golden file was written by the step as it was before mini-batch updates and the shared step module; the
whole-batch step (`optim.mini_batch_prompts = 0`, one epoch) must keep reproducing it. Regenerate only for a
change that is meant to move numbers, and say why in the commit: `python tests/test_step_pin.py --write`.
"""
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import save_tiny_model, tiny_config
from sdpg.records import RecordStream
from sdpg.run import build_trainer

GOLDEN = Path(__file__).parent / "golden" / "step_pin.json"
CASES = {
    "sdpg-whole": {"loss__method": "sdpg", "optim__micro_batch": 64},
    "sdpg-accumulated": {"loss__method": "sdpg", "optim__micro_batch": 5},
    "grpo-whole": {"loss__method": "grpo", "optim__micro_batch": 64},
    "grpo-accumulated": {"loss__method": "grpo", "optim__micro_batch": 5},
}
"""the random tiny model solves nothing: the overlong penalty spreads the rewards (non-zero advantages), and the
gate is off to keep the distillation term live"""
STEPS = 2
UNPINNED = ("time/", "perf/")
"""wall-clock keys"""
REL, ABS = 1e-6, 1e-7
ADDED = {"grad/norm_max", "optim/updates", "rollout/logp_gap_mean", "rollout/logp_gap_max"}
"""keys the step writes since the golden file was made (mini-batch updates, recomputed old log-probs)"""
ADDED_LIVE_TEACHER = {"kl/clamped_fraction"}
"""keys added since then where the live teacher's KL reaches the loss (the KL clamp's statistic): not GRPO's"""
DROPPED = {"grpo": {"gate/tokens"}}
"""keys a method no longer writes: GRPO runs its teacher on the recorded groups only (`sdpg.metrics`)"""
RESCOPED = {"grpo": {"kl/distill_mean", "kl/distill_gated_mean"}}
"""keys now measured over the recorded groups only (GRPO), not over the whole batch as pinned"""


def run_case(model_dir, run_dir, overrides: dict) -> list[dict]:
    cfg = tiny_config(model_dir, run_dir, run__steps=STEPS, loss__gate=False, loss__beta=0.5,
                      reward__overlong_buffer=6, **overrides)
    trainer = build_trainer(cfg, RecordStream(run_dir), progress=False)
    try:
        rows = [trainer.train_step() for _ in range(STEPS)]
    finally:
        trainer.verifier.close()
    return [{k: v for k, v in row.items() if not k.startswith(UNPINNED)} for row in rows]


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_step_reproduces_its_pinned_metrics(tiny_model_dir, tmp_path, case):
    golden = json.loads(GOLDEN.read_text())[case]
    got = run_case(tiny_model_dir, tmp_path, CASES[case])
    for step, (want, have) in enumerate(zip(golden, got, strict=True), 1):
        method = CASES[case]["loss__method"]
        dropped = DROPPED.get(method, set())
        added = ADDED | (set() if method == "grpo" else ADDED_LIVE_TEACHER)
        assert set(have) == (set(want) - dropped) | added, f"step {step}: keys differ"
        for key, value in want.items():
            if key not in dropped | RESCOPED.get(method, set()):
                assert _close(have[key], value), f"step {step} {key}: {have[key]} != pinned {value}"


def _close(have, want) -> bool:
    if isinstance(want, list):
        return len(have) == len(want) and all(_close(h, w) for h, w in zip(have, want))
    return math.isclose(have, want, rel_tol=REL, abs_tol=ABS)


def write_golden(model_dir: Path, scratch: Path) -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({case: run_case(model_dir, scratch / case, CASES[case]) for case in sorted(CASES)},
                                 indent=1, sort_keys=True) + "\n")


if __name__ == "__main__" and sys.argv[1:2] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_golden(save_tiny_model(Path(tmp) / "model"), Path(tmp))
