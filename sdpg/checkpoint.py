"""Checkpoints: `save_pretrained` weights + optimizer, scheduler, RNG, sampler, step and config.

Design choices:
- Written atomically: everything goes to a temporary sibling directory that is renamed into place only
  when complete, so a crash mid-save never leaves a half checkpoint that resume would pick up. A checkpoint
  of the same step already there is moved aside first and removed only after the rename, so a crash between
  the two leaves a complete copy (`.tmp_step_*` or `.old_step_*`) that resume still finds.
- A manifest (`manifest.json`, written last) records every file's size and SHA-256 at save time. Resume takes
  the newest checkpoint that verifies against it and loads; each one it skips is reported with the file and
  the reason. Checkpoints from before manifests are verified by loading them.
- Steps are ordered as numbers, not names (`step_1000000` is newer than `step_999999`).
- A save that fails (full disk, read-only folder) removes its temporary directory and raises a
  `StorageError` that names the checkpoint, the folder and the cause.
- The training state is loaded with `weights_only=True`: it holds only tensors and plain values, and a
  run directory copied from elsewhere cannot run code through it.
- Resume restores the trained weights into a model built from the original config, so the frozen
  reference is still the initial policy, not the checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
import shutil
from pathlib import Path

import torch

from sdpg.records import storage_error

STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
"""{"step", "files": {relative path: {"bytes", "sha256"}}}, written last: its presence marks a complete copy"""
_NAME = re.compile(r"^\.?(?:tmp_|old_)?step_(\d+)$")


def save_checkpoint(trainer, run_dir: str | Path, *, keep: int = 2) -> Path:
    """Save `trainer` under run_dir/checkpoints; a failed save leaves nothing behind and raises StorageError."""
    root = Path(run_dir) / "checkpoints"
    final = root / f"step_{trainer.step:06d}"
    tmp = root / f".tmp_step_{trainer.step:06d}"
    try:
        _write_checkpoint(trainer, tmp)
        _swap_in(tmp, final)
    except Exception as err:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not also keep the partial copy
        what = f"save checkpoint {final.name} (the partial copy was removed) in"
        if isinstance(err, OSError):
            raise storage_error(what, root, err) from err
        raise RuntimeError(f"cannot {what} {root}: {err}") from err  # e.g. safetensors' own write error
    kept = sorted((p for p in root.glob("step_*") if _step_of(p) >= 0), key=_step_of)
    leftovers = [p for p in root.glob(".*step_*") if 0 <= _step_of(p) <= trainer.step]  # copies a crash left
    for old in kept[:-keep] + leftovers:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(trainer, tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainer.model.save_pretrained(tmp / "model")
    trainer.tokenizer.save_pretrained(tmp / "model")
    torch.save({
        "step": trainer.step,
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        **sampling_state(trainer),
    }, tmp / STATE_FILE)
    (tmp / "config.json").write_text(json.dumps(trainer.cfg.to_dict(), indent=2))
    files = {str(f.relative_to(tmp)): {"bytes": f.stat().st_size, "sha256": _sha256(f)}
             for f in sorted(tmp.rglob("*")) if f.is_file()}
    (tmp / MANIFEST_FILE).write_text(json.dumps({"step": trainer.step, "files": files}, indent=1))


def _swap_in(tmp: Path, final: Path) -> None:
    """Rename the complete `tmp` to `final`; an existing `final` is set aside first and removed only after."""
    aside = final.with_name(f".old_{final.name}")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    tmp.rename(final)
    shutil.rmtree(aside, ignore_errors=True)


def sampling_state(trainer) -> dict:
    """What decides the next batch: the prompt sampler's position and the random states."""
    return {"sampler": trainer.sampler.state(), "torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}


def restore_sampling_state(trainer, state: dict) -> None:
    trainer.sampler.load_state(state["sampler"])
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _step_of(path: Path) -> int:
    match = _NAME.match(path.name)
    return int(match[1]) if match else -1


def checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, newest step first: `step_*`, then a complete copy a crash left mid-swap."""
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("*step_*") if _step_of(p) >= 0 and p.is_dir()] if root.is_dir() else []
    complete = [p for p in found if (p / MANIFEST_FILE).exists() or
                (p.name.startswith("step_") and (p / STATE_FILE).exists())]
    return sorted(complete, key=lambda p: (-_step_of(p), not p.name.startswith("step_")))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[0] if found else None


def verify_checkpoint(ckpt: Path) -> str | None:
    """Why `ckpt` does not match its manifest (naming the file), or None when it does (or has no manifest)."""
    manifest = ckpt / MANIFEST_FILE
    if not manifest.exists():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{manifest} is not a readable manifest ({err})"
    for name, want in files.items():
        path = ckpt / name
        if not path.is_file():
            return f"{path} is missing"
        size = path.stat().st_size
        if size != want["bytes"]:
            return f"{path} is {size} bytes, {want['bytes']} when it was saved"
        if _sha256(path) != want["sha256"]:
            return f"{path} does not match the SHA-256 recorded when it was saved"
    return None


def resume_checkpoint(trainer, run_dir: str | Path) -> tuple[Path, int, list[tuple[Path, str]]]:
    """Load the newest checkpoint that verifies and loads: (it, its step, [(skipped checkpoint, why)]).

    ValueError naming every checkpoint and why when none does."""
    skipped = []
    for ckpt in checkpoints(run_dir):
        why = verify_checkpoint(ckpt)
        if why is None:
            try:
                step = load_checkpoint(trainer, ckpt)
                return _promote(ckpt, step), step, skipped
            except (OSError, ValueError, RuntimeError, EOFError, KeyError, pickle.UnpicklingError) as err:
                why = str(err)
        skipped.append((ckpt, why))
    reasons = "; ".join(f"{path.name}: {why}" for path, why in skipped) or "there is none"
    raise ValueError(f"cannot resume {run_dir}: no checkpoint verifies ({reasons})")


def _promote(ckpt: Path, step: int) -> Path:
    """A complete copy a crash left under a temporary name becomes the checkpoint of its step."""
    final = ckpt.with_name(f"step_{step:06d}")
    if ckpt.name.startswith("step_") or final.exists():
        return ckpt
    ckpt.rename(final)
    return final


def load_checkpoint(trainer, ckpt: str | Path) -> int:
    """Restore weights and training state into `trainer`; returns the step it continues from."""
    from transformers import AutoModelForCausalLM

    ckpt = Path(ckpt)
    if not (ckpt / STATE_FILE).exists():
        raise FileNotFoundError(f"{ckpt} is not a complete checkpoint (no {STATE_FILE})")
    try:
        saved = AutoModelForCausalLM.from_pretrained(ckpt / "model", dtype=trainer.model.dtype)
    except Exception as err:  # safetensors and transformers raise many kinds for a damaged file
        raise ValueError(f"{ckpt / 'model'} cannot be loaded ({type(err).__name__}: {err})") from None
    trainer.model.load_state_dict(saved.state_dict())
    try:  # tensors and plain values only: a run directory from elsewhere must not run code when resumed
        state = torch.load(ckpt / STATE_FILE, weights_only=True)
    except pickle.UnpicklingError as err:
        found = [line.strip().split(". Please")[0] for line in str(err).splitlines()
                 if "Unsupported global" in line]
        raise ValueError(f"{ckpt / STATE_FILE} holds more than tensors and plain values, so it is not loaded "
                         f"(loading it could run code){': ' + found[0] if found else ''}") from None
    except (EOFError, RuntimeError) as err:  # an empty or cut-short file
        raise ValueError(f"{ckpt / STATE_FILE} cannot be read ({type(err).__name__}: {err or 'the file ends early'})") from None
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    restore_sampling_state(trainer, state)
    trainer.step = state["step"]
    return trainer.step
