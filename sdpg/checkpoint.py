"""Checkpoints: `save_pretrained` weights + optimizer, scheduler, RNG, sampler, step and config.

Design choices:
- Written atomically: everything goes to a temporary sibling directory that is renamed into place only
  when complete, so a crash mid-save never leaves a half checkpoint that resume would pick up.
- A save that fails (full disk, read-only folder) removes its temporary directory and raises a
  `StorageError` that names the checkpoint, the folder and the cause.
- `latest_checkpoint(run_dir)` finds the highest complete `checkpoints/step_XXXXXX`; older ones beyond
  `keep` are pruned after a successful save.
- The training state is loaded with `weights_only=True`: it holds only tensors and plain values, and a
  run directory copied from elsewhere cannot run code through it.
- Resume restores the trained weights into a model built from the original config, so the frozen
  reference is still the initial policy, not the checkpoint.
"""
from __future__ import annotations

import json
import pickle
import random
import shutil
from pathlib import Path

import torch

from sdpg.records import storage_error

STATE_FILE = "trainer_state.pt"


def save_checkpoint(trainer, run_dir: str | Path, *, keep: int = 2) -> Path:
    """Save `trainer` under run_dir/checkpoints; a failed save leaves nothing behind and raises StorageError."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{trainer.step:06d}"
    tmp = root / f".tmp_step_{trainer.step:06d}"
    try:
        _write_checkpoint(trainer, tmp, final)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not also keep the partial copy
        what = f"save checkpoint {final.name} (the partial copy was removed) in"
        if isinstance(err, OSError):
            raise storage_error(what, root, err) from err
        raise RuntimeError(f"cannot {what} {root}: {err}") from err  # e.g. safetensors' own write error
    for old in sorted(root.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(trainer, tmp: Path, final: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainer.model.save_pretrained(tmp / "model")
    trainer.tokenizer.save_pretrained(tmp / "model")
    torch.save({
        "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "sampler": trainer.sampler.state(),
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
    }, tmp / STATE_FILE)
    (tmp / "config.json").write_text(json.dumps(trainer.cfg.to_dict(), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    complete = [c for c in ckpts if (c / STATE_FILE).exists()]
    return complete[-1] if complete else None


def load_checkpoint(trainer, ckpt: str | Path) -> int:
    """Restore weights and training state into `trainer`; returns the step it continues from."""
    from transformers import AutoModelForCausalLM

    ckpt = Path(ckpt)
    if not (ckpt / STATE_FILE).exists():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {STATE_FILE})")
    saved = AutoModelForCausalLM.from_pretrained(ckpt / "model", dtype=trainer.model.dtype)
    trainer.model.load_state_dict(saved.state_dict())
    try:  # tensors and plain values only: a run directory from elsewhere must not run code when resumed
        state = torch.load(ckpt / STATE_FILE, weights_only=True)
    except pickle.UnpicklingError as err:
        found = [line.strip().split(". Please")[0] for line in str(err).splitlines()
                 if "Unsupported global" in line]
        raise ValueError(f"{ckpt / STATE_FILE} holds more than tensors and plain values, so it is not loaded "
                         f"(loading it could run code){': ' + found[0] if found else ''}") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.sampler.load_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    trainer.step = state["step"]
    return trainer.step
