"""Publishing a directory (a converted checkpoint, a trained model) so that nobody ever sees half
of one and a kill at any moment loses nothing that was there before.

    staging = staging_directory(target)      # .NAME.partial-XXXX beside the target, same filesystem
    ... write everything into staging ...
    replace_directory(staging, target)       # rename into place (an old target moved aside first)

A kill (SIGKILL, power loss) can leave two kinds of leftovers beside the target, which
:func:`recover_leftovers` handles on the next run: staging directories (deleted: they were never
published) and an old target moved aside (``.NAME.replaced-XXXX``: put back when the target is
missing, i.e. the kill came between the two renames; deleted otherwise).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["current_umask", "recover_leftovers", "replace_directory", "staging_directory"]


def current_umask() -> int:
    """The process's file-creation mask (reading it means setting it: set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def staging_directory(target: Path) -> Path:
    """A new empty directory beside `target` to write its next version into (permissions as
    mkdir gives, not mkdtemp's private 0700)."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())
    return staging


def replace_directory(staging: Path, target: Path) -> None:
    """Rename the finished `staging` to `target`. An existing target is first moved aside, then
    deleted once the new one is in place; if the second rename fails the old one is put back."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = target.parent / f".{target.name}.replaced-{uuid.uuid4().hex[:8]}"
    os.replace(target, aside)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def recover_leftovers(target: Path, is_complete: Callable[[Path], bool]) -> list[str]:
    """Clean up after a publish of `target` that was killed; returns what was done, a line each.
    `is_complete` says whether a directory moved aside is a whole old version worth restoring."""
    done: list[str] = []
    if not target.parent.is_dir():
        return done
    for entry in sorted(target.parent.glob(f".{target.name}.partial-*")):
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {str(entry)!r}, left by an interrupted write")
    for entry in sorted(target.parent.glob(f".{target.name}.replaced-*")):
        if not entry.is_dir():
            continue
        if not target.exists() and is_complete(entry):
            os.replace(entry, target)
            done.append(
                f"restored {str(target)!r} from {entry.name!r}, moved aside by an interrupted replace"
            )
        else:
            shutil.rmtree(entry, ignore_errors=True)
            done.append(f"removed {str(entry)!r}, the old copy of a replace that had finished")
    return done
