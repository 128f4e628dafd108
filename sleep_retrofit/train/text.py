"""Plain text as training data (``data.task: text``): any corpus, no task labels.

The text is tokenised with the model's own tokenizer, joined with its end-of-sequence token and
cut into rows of ``length`` tokens. Every position after the first window is a target: the
model has to predict it after at least one chunk was evicted (with sleep) or, for the
distillation objective, match what the base model predicts with the whole row in view.
Rows are assigned to the train / validation split by a content hash, so held-out text never
trains.

    data:
      task: text
      path: corpus.txt     # a .txt/.md or .jsonl file, a directory of .txt/.md files, or a datasets id
      options: {field: text, length: 512}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..tasks.splits import split_of_key
from .config import ConfigError

TEXT_OPTIONS = ("field", "length")


def _documents(path: str, field: str) -> list[str]:
    source = Path(path).expanduser()
    if source.is_dir():
        # Text files only: a directory may hold other JSON lines (results, logs) than a corpus.
        files = sorted(p for p in source.rglob("*") if p.suffix in (".txt", ".md"))
        if not files:
            raise ConfigError(f"data.path {path} holds no .txt or .md files")
        return [doc for file in files for doc in _documents(str(file), field)]
    if source.is_file():
        text = source.read_text(encoding="utf-8")
        if source.suffix == ".jsonl":
            try:
                return [str(json.loads(line)[field]) for line in text.splitlines() if line.strip()]
            except (ValueError, KeyError, TypeError) as err:
                raise ConfigError(
                    f"data.path {path}: every line must be a JSON object with {field!r} ({err})"
                ) from None
        return [text]
    try:
        import datasets

        loaded = datasets.load_dataset(path, split="train")
    except Exception as err:  # any failure of the Hub or the builder is a bad data.path here
        raise ConfigError(
            f"data.path {path!r} is no local file or directory, and datasets cannot load it: {err}"
        ) from None
    if field not in loaded.column_names:
        raise ConfigError(f"dataset {path!r} has no column {field!r}; columns: {loaded.column_names}")
    return [str(text) for text in loaded[field]]


def text_rows(
    path: str | None, options: dict[str, Any], tokenizer: Any, window: int, split: str, count: int
) -> list[dict[str, Any]]:
    """Up to `count` rows of `split`: ``length``-token pieces of the corpus, targets after the
    first `window` tokens."""
    unknown = sorted(set(options) - set(TEXT_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown data.options for text: {unknown}; expected some of {list(TEXT_OPTIONS)}")
    if path is None:
        raise ConfigError("data.task=text needs data.path: a text file, a directory or a datasets id")
    if tokenizer is None:
        raise ConfigError("data.task=text needs the model's tokenizer; model.source has none")
    field, length = options.get("field", "text"), options.get("length", 4 * window)
    if not isinstance(length, int) or length <= window:
        raise ConfigError(
            f"data.options.length must be an int longer than the window L={window}, got {length!r}"
        )
    stream: list[int] = []
    for doc in _documents(path, field):
        stream += tokenizer(doc, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            stream.append(tokenizer.eos_token_id)
    rows = []
    for start in range(0, len(stream) - length + 1, length):
        ids = stream[start : start + length]
        if split_of_key(f"{path}:{start}") != split:
            continue
        rows.append(
            {"input_ids": ids, "loss_mask": [0] * window + [1] * (length - window), "target_start": 0}
        )
        if len(rows) == count:
            break
    if not rows:
        raise ConfigError(
            f"data.path {path} gives no {split} rows of {length} tokens ({len(stream)} tokens in all)"
        )
    return rows
