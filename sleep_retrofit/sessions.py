"""Sessions: ingest a document once, keep its consolidated state, answer many questions from it.

The paper's bill: the N consolidation passes are paid when the context is read, while nobody
waits; answering is one ordinary pass. A :class:`SleepState` is what reading left behind: the
fast-weight states, the keys/values attention may still see, the partly filled current chunk
and the position, plus the sleep settings it was read with and the fingerprint of the model
that read it.

    state = model.ingest(document_ids, passes=4)        # SleepRetrofitForCausalLM.ingest
    state.save("runs/doc_state")                          # state.safetensors + state.json
    state = SleepState.load("runs/doc_state")
    out = model.generate(question_ids, sleep_state=state, max_new_tokens=32)

generate() works on a copy, so one state answers any number of questions, in a batch or one by
one, and is never changed by them. A state only fits the model that made it: the fingerprint is
the SHA-256 of the model's weights, checked before every use.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adapters import weights_sha256
from .publish import replace_directory, staging_directory
from .sleep import SleepCache

__all__ = ["SleepState", "SleepStateError", "model_fingerprint"]

STATE_FILE = "state.safetensors"
META_FILE = "state.json"
FORMAT = "sleep-retrofit-state/1"


class SleepStateError(ValueError):
    """A saved state that is missing, damaged, or made by another model or with other settings."""


_FINGERPRINTS: dict[int, tuple[tuple, str]] = {}


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model's weights (names, dtypes, shapes, bytes). Hashing a 1.4B model takes
    seconds, so the result is remembered per model until a parameter changes (in place or by
    replacement: every parameter's storage and version counter are compared)."""
    key = tuple((p.data_ptr(), p._version) for p in model.state_dict(keep_vars=True).values())
    known = _FINGERPRINTS.get(id(model))
    if known is None or known[0] != key:
        known = (key, weights_sha256(model))
        _FINGERPRINTS[id(model)] = known
    return known[1]


@dataclass
class SleepState:
    """A document read with sleep: the cache it left and how it was read (see module docstring).

    cache: the SleepCache after the document (batch rows: one per document).
    passes, window, eviction, tolerance: the settings it was read with; window and eviction
        must stay the same for whatever continues from it, passes and tolerance are the
        defaults for the chunks to come.
    fingerprint: :func:`model_fingerprint` of the model that read it.
    """

    cache: SleepCache
    passes: int
    window: int
    eviction: str
    fingerprint: str
    tolerance: float = 0.0

    @property
    def tokens(self) -> int:
        """Tokens consumed (the position the next token continues from)."""
        return self.cache.seen_tokens

    @property
    def batch_size(self) -> int:
        return self.cache.batch_size or 1

    def __repr__(self) -> str:
        return (
            f"SleepState(tokens={self.tokens}, batch_size={self.batch_size}, passes={self.passes}, "
            f"window={self.window}, eviction={self.eviction!r}, bytes={self.cache.memory_bytes():,})"
        )

    def check_model(self, model: nn.Module) -> None:
        """Raise SleepStateError unless `model` is the model this state was read by."""
        found = model_fingerprint(model)
        if found != self.fingerprint:
            raise SleepStateError(
                f"this sleep state was made by another model (weights sha256 {self.fingerprint[:12]}..., "
                f"this model's {found[:12]}...): ingest the document again with this model"
            )

    def fork(self, batch_size: int, device: torch.device | str | None = None) -> SleepCache:
        """A fresh cache to continue from: a copy (the state itself never changes), each row
        repeated so that `batch_size` continuations (questions) share one document."""
        tensors, metadata = self.cache.to_tensors()
        if device is not None:
            tensors = {name: t.to(device) for name, t in tensors.items()}
        cache = SleepCache.from_tensors(tensors, metadata)
        rows = self.batch_size
        if batch_size != rows:
            if rows != 1:
                raise SleepStateError(
                    f"this state holds {rows} documents; continue it with {rows} rows, not {batch_size}"
                )
            cache.batch_repeat_interleave(batch_size)
        return cache

    # ----------------------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``state.safetensors`` + ``state.json`` into directory `path` (written beside and
        renamed into place: a kill never leaves half a state; an existing state is replaced)."""
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        tensors, layout = self.cache.to_tensors()
        meta = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "passes": self.passes,
            "window": self.window,
            "eviction": self.eviction,
            "tolerance": self.tolerance,
            "tokens": self.tokens,
            "layout": layout,
        }
        staging = staging_directory(target)
        try:
            save_file({n: t.cpu() for n, t in tensors.items()}, str(staging / STATE_FILE))
            (staging / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
            replace_directory(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> SleepState:
        """The state :meth:`save` wrote into `path`."""
        directory = Path(path).expanduser()
        missing = [name for name in (STATE_FILE, META_FILE) if not (directory / name).is_file()]
        if missing:
            raise SleepStateError(
                f"{str(directory)!r} is not a saved sleep state: {', '.join(missing)} missing "
                "(write one with `sleep-retrofit ingest` or state.save())"
            )
        try:
            meta = json.loads((directory / META_FILE).read_text())
            if meta.get("format") != FORMAT:
                raise SleepStateError(f"{META_FILE} has format {meta.get('format')!r}, expected {FORMAT!r}")
            tensors = load_file(str(directory / STATE_FILE), device=str(device))
            cache = SleepCache.from_tensors(tensors, meta["layout"])
            return cls(
                cache,
                int(meta["passes"]),
                int(meta["window"]),
                meta["eviction"],
                meta["fingerprint"],
                float(meta.get("tolerance", 0.0)),
            )
        except SleepStateError:
            raise
        except Exception as error:  # a truncated file, a hand-edited json: one line, not a trace
            raise SleepStateError(
                f"cannot read the sleep state in {str(directory)!r}: {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}"
            ) from None
