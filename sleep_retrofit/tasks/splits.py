"""Fixed, disjoint train / validation / test splits for generated tasks.

Two rules together make the splits reproducible and disjoint:

1. Fixed seeds. Each split of each task draws from its own random stream, seeded by
   `split_seed(task, split, seed)` (a hash of the three; `seed=0` is the project's fixed
   default). The same call returns the same examples on every machine.
2. Disjointness by content. Every example has a content key: what makes two examples the
   same problem (Rule 110: the bit strings; Depo: the cycle up to rotation; GSM-Infinite: the
   core statements and the question). `split_of_key(key)` hashes the key into one split, and
   a split's stream keeps only the examples whose key belongs to it. No example of one split
   can therefore appear in another, whatever the seeds, sizes or task options of each call,
   and no split needs to know what the others contain.

A task plugs in through three methods (see `SplitTask`): `draft(rng)` draws the part of an
example that decides its key (cheap), `key(draft)` names it, and `finish(draft, rng)` builds
the full row (for GSM-Infinite that is where the long distractor text is written, so drafts
rejected for belonging to another split cost little).
"""

from __future__ import annotations

import hashlib
import random
from typing import Any, Protocol

from ..checks import is_int

SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Share of the key space owned by each split; the held-out splits are small, as usual.
SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "validation": 0.1, "test": 0.1}


class SplitTask(Protocol):
    """What `generate_split` needs from a task."""

    name: str

    def draft(self, rng: random.Random) -> Any: ...

    def key(self, draft: Any) -> str: ...

    def finish(self, draft: Any, rng: random.Random) -> dict[str, Any]: ...


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def split_seed(task: str, split: str, seed: int = 0) -> int:
    """The seed of the random stream of `split` of `task` (deterministic across machines)."""
    check_split(split)
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    digest = hashlib.sha256(f"{task}/{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def split_of_key(key: str) -> str:
    """The one split that owns examples with this content key."""
    position = _unit_hash("split-assignment/" + key)
    start = 0.0
    for split in ("test", "validation", "train"):
        start += SPLIT_FRACTIONS[split]
        if position < start:
            return split
    return "train"  # rounding at the very top of [0, 1)


def generate_split(
    task: SplitTask,
    split: str,
    num_examples: int,
    *,
    seed: int = 0,
    max_attempts: int | None = None,
) -> list[dict[str, Any]]:
    """Draw `num_examples` rows of `split` from `task`'s stream; each row gets an `id` (its
    index in the split). Raises ValueError when the task's example space is too small to
    fill the split (more than `max_attempts` drafts, default 200 per example + 10,000)."""
    check_split(split)
    if not isinstance(num_examples, int) or num_examples < 0:
        raise ValueError(f"num_examples must be a non-negative int, got {num_examples!r}")
    rng = random.Random(split_seed(task.name, split, seed))
    budget = max_attempts if max_attempts is not None else 200 * num_examples + 10_000
    rows: list[dict[str, Any]] = []
    attempts = 0
    with _progress(num_examples, f"{task.name} {split}") as bar:
        while len(rows) < num_examples:
            if attempts >= budget:
                raise ValueError(
                    f"{task.name}: drew {attempts} candidates but only {len(rows)} of {num_examples} belong "
                    f"to the {split!r} split; the configuration allows too few distinct examples"
                )
            attempts += 1
            draft = task.draft(rng)
            if split_of_key(task.key(draft)) != split:
                continue
            row = task.finish(draft, rng)
            row["id"] = len(rows)
            rows.append(row)
            bar.update()
    return rows


# A split of at least this many examples shows a progress bar while it is drawn (on a terminal
# only: tqdm's auto mode keeps logs, CI and captured output clean).
PROGRESS_MIN_EXAMPLES = 10_000


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    show = total >= PROGRESS_MIN_EXAMPLES
    return tqdm(total=total, desc=desc, unit="ex", leave=False, disable=None if show else True)
