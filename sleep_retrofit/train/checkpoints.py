"""Training checkpoints that never lose progress: written whole before anything is rotated out,
validated whole before anything is loaded, holding nothing executable of ours.

A stage's checkpoints live in ``{stage_dir}/checkpoints/checkpoint_<i>`` (numbers never
reused). Each is Accelerate's ``save_state`` (model safetensors, optimiser and RNG states, which
Accelerate reads with ``weights_only=True``) plus ``trainer_state.json``: the loop's progress and
LR schedules as JSON, instead of the pickles Accelerate's ``register_for_checkpointing`` would
write and read back with ``weights_only=False`` (a planted pickle would run on resume).

- **Save**: into ``.checkpoint_<i>.partial``, every file fsynced, then renamed to its name (one
  atomic rename), and only then are the oldest complete checkpoints beyond the limit deleted:
  at every moment the newest complete checkpoint exists.
- **Load**: the newest checkpoint whose every file reads back (safetensors headers and sizes,
  zip archives' checksums, pickles parsed without running them, the JSON) is loaded; an
  unreadable one is skipped before the model or optimiser is touched, so a half-written
  checkpoint never leaks into the run. The warning says where training resumes from.
- **Config**: a stage resumed with another config (``model.hidden_size=32`` after a run at 64)
  is refused, naming the keys that differ, before any checkpoint is read or deleted.
"""

from __future__ import annotations

import json
import os
import pickletools
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import STAGES, ConfigError, TrainConfig

__all__ = ["check_resumable", "find_checkpoints", "load_latest", "save_checkpoint"]

STATE_FILE = "trainer_state.json"
CONFIG_FILE = "config.json"
# Keys a resumed stage may change: they say how to log, save and evaluate, not what to train.
RESUME_FREE_KEYS = (
    "output_dir",
    "progress",
    "log_every",
    "save_every",
    "save_total_limit",
    "eval_every",
    "eval_batch_size",
    "resume",
    "data.eval_examples",
)


def find_checkpoints(stage_dir: Path) -> list[Path]:
    """The stage's complete ``checkpoint_<i>`` directories, oldest first."""
    root = Path(stage_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [
        path
        for path in root.iterdir()
        if path.is_dir() and path.name.startswith("checkpoint_") and path.name[len("checkpoint_") :].isdigit()
    ]
    return sorted(found, key=_number)


def _number(path: Path) -> int:
    return int(path.name[len("checkpoint_") :])


# ----------------------------------------------------------------------------- config
def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_resumable(stage_dir: Path, config: TrainConfig, *, finished: bool = False) -> None:
    """Refuse to resume, or to skip as done, a stage whose checkpoints or result were made under
    another config (ConfigError naming the differing keys). Compared: what decides the stage's
    training (model, data, the loop's settings and this stage's own section), not how it is
    logged, saved or evaluated, and not which other stages run. A stage without checkpoints or
    result may start with any config."""
    saved = stage_dir / CONFIG_FILE
    if not (finished or find_checkpoints(stage_dir)) or not saved.is_file():
        return
    try:
        before = _flatten(json.loads(saved.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return  # an unreadable record of the old config: the checkpoints' own check decides
    now = _flatten(json.loads(json.dumps(config.to_dict(), default=str)))
    stage = stage_dir.name
    other_stages = tuple(f"{name}." for name in STAGES if name != stage)
    changed = [
        f"{key} {before.get(key)!r} -> {now.get(key)!r}"
        for key in sorted(set(before) | set(now))
        if key not in RESUME_FREE_KEYS
        and key != "stages"
        and not key.startswith(other_stages)
        and before.get(key) != now.get(key)
    ]
    if changed:
        shown = ", ".join(changed[:4]) + (f" (+{len(changed) - 4} more)" if len(changed) > 4 else "")
        what = "finished" if finished else "has checkpoints"
        raise ConfigError(
            f"{stage} in {stage_dir.parent} {what} under another config ({shown}); nothing was deleted. "
            "Rerun with the old values to resume, or give a new output_dir to start afresh"
        )


# ----------------------------------------------------------------------------- validation
def _problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded whole, or None. Reads every file, runs none."""
    from ..converted import read_safetensors_header

    state = path / STATE_FILE
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"{STATE_FILE}: {type(error).__name__}: {error}"
    planted = sorted(f.name for f in path.glob("custom_checkpoint_*"))
    if planted:  # Accelerate would unpickle these with weights_only=False: never load them
        return f"{planted[0]} is not written by this trainer and would run code when loaded"
    for file in sorted(path.iterdir()):
        try:
            if file.suffix == ".safetensors":
                read_safetensors_header(file)
            elif file.suffix in (".bin", ".pkl", ".pt") and zipfile.is_zipfile(file):
                # torch.save writes a zip archive: testzip reads every member against its CRC
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    return f"{file.name}: member {bad} is corrupt"
            elif file.suffix in (".bin", ".pkl", ".pt"):  # a plain pickle (or a cut archive):
                for _ in pickletools.genops(file.read_bytes()):  # parsed opcode by opcode, not run
                    pass
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:  # UnreadableWeightsError too
            return f"{file.name}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


# ----------------------------------------------------------------------------- save / load
def _fsync_tree(directory: Path) -> None:
    for file in directory.rglob("*"):
        if file.is_file():
            with file.open("rb") as handle:
                os.fsync(handle.fileno())
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def save_checkpoint(accelerator: Any, stage_dir: Path, state: dict[str, Any], limit: int | None) -> Path:
    """Write checkpoint number (newest + 1) whole, then rotate; returns its path (all ranks)."""
    root = Path(stage_dir) / "checkpoints"
    number = _highest_used(root) + 1  # never reuse a number, not even a corrupt one's
    final = root / f"checkpoint_{number}"
    staging = root / f".checkpoint_{number}.partial"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(".checkpoint_*.partial"):  # of a save that was killed
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state), encoding="utf-8")
        _fsync_tree(staging)
        os.replace(staging, final)
        _fsync_directory(root)
        if limit is not None:
            for old in find_checkpoints(stage_dir)[: -max(1, limit)]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _highest_used(root: Path) -> int:
    """The highest checkpoint number any entry of `root` used (a killed save's staging directory
    too): -1 if none."""
    used = [
        re.fullmatch(r"\.?checkpoint_(\d+)(\.partial)?", entry.name) for entry in root.glob("*checkpoint_*")
    ]
    return max([int(match.group(1)) for match in used if match] + [-1])


def load_latest(accelerator: Any, stage_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest checkpoint that validates whole (model, optimisers, RNG: Accelerate's
    load_state) and return it with its trainer state; unreadable ones are skipped, with a
    warning that says what training resumes from, before anything is loaded."""
    candidates = list(reversed(find_checkpoints(stage_dir)))
    for i, path in enumerate(candidates):
        problem = _problem(path)
        if problem is not None:
            after = (
                f"resuming from {candidates[i + 1].name} instead"
                if i + 1 < len(candidates)
                else "no earlier checkpoint: the stage starts again from step 0"
            )
            warnings.warn(f"checkpoint {path} is corrupt or incomplete ({problem}); {after}", stacklevel=2)
            continue
        accelerator.load_state(str(path))
        return path, json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    return None
