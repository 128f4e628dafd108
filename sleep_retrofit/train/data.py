"""Training data: task rows -> the features SleepCollator reads, and a resumable sampler."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from ..tasks import build_dataset, task_tokenizer
from .config import ConfigError, TrainConfig

__all__ = ["EpochShuffleSampler", "FeatureDataset", "build_rows", "training_tokenizer"]

_FEATURES = ("input_ids", "loss_mask", "target_start")


class FeatureDataset(Dataset):
    """The SleepCollator features of task rows (input_ids, loss_mask, target_start)."""

    def __init__(self, rows: list[dict[str, Any]]):
        self.rows = [{name: row[name] for name in _FEATURES} for row in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class EpochShuffleSampler(Sampler[int]):
    """A permutation of the dataset drawn from (seed, epoch): the order of an epoch depends on
    nothing else, so a resumed run sees exactly the batches an uninterrupted one would.

    `epoch_of`: where the epoch comes from (the trainer passes its progress counter). Then
    ``set_epoch`` calls are ignored: Accelerate's prepared loaders call it at every iteration
    with their own count of iterations in this process, which restarts at 0 in a resumed run."""

    def __init__(self, size: int, seed: int, epoch_of: Callable[[], int] | None = None):
        self.size, self.seed, self.epoch = size, seed, 0
        self.epoch_of = epoch_of

    def set_epoch(self, epoch: int) -> None:
        if self.epoch_of is None:
            self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        epoch = self.epoch_of() if self.epoch_of is not None else self.epoch
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


def training_tokenizer(config: TrainConfig, model_tokenizer: Any) -> Any:
    """The tokenizer of the run: the task's word tokenizer for the synthetic tasks (their symbols
    are words), the model's own for GSM-Infinite."""
    data = config.data
    if data.task == "text":
        return model_tokenizer  # checked where the rows are built
    if data.task == "gsm_infinite":
        if model_tokenizer is None:
            raise ConfigError(
                f"gsm_infinite needs the model's tokenizer, but model.source={config.model.source!r} has none"
            )
        return model_tokenizer
    try:
        return task_tokenizer(data.task, **data.options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data.options for {data.task}: {err}") from None


def build_rows(config: TrainConfig, split: str, count: int, tokenizer: Any) -> list[dict[str, Any]]:
    """`count` rows of `split` with the sleep-layout features (a shuffled, even mixture over
    `data.mixture` when it is set)."""
    data = config.data
    if data.mixture:
        rows: list[dict[str, Any]] = []
        for i, overrides in enumerate(data.mixture):
            share = count // len(data.mixture) + (i < count % len(data.mixture))
            part = replace(data, options={**data.options, **overrides}, mixture=[], seed=data.seed + 7919 * i)
            rows += build_rows(replace(config, data=part), split, share, tokenizer)
        random.Random(data.seed).shuffle(rows)
        return rows
    if data.task == "text":
        from .text import text_rows

        return text_rows(data.path, data.options, tokenizer, config.model.window, split, count)
    try:
        if data.task != "gsm_infinite":
            return list(build_dataset(data.task, split, count, seed=data.seed, **data.options))
        if data.path is not None:
            from ..tasks.gsm_infinite.loader import load_gsm_infinite
            from ..tasks.gsm_infinite.prompts import sleep_features
            from ..tasks.splits import split_of_key

            loaded = load_gsm_infinite(data.path, **data.options)
            rows = []
            for i, row in enumerate(loaded):
                # Held-out rows never train: the content-hash split of the row's index decides.
                if split_of_key(f"{data.path}:{i}") == split:
                    rows.append({**row, **sleep_features(row, tokenizer)})
                if len(rows) == count:
                    break
            if not rows:
                raise ConfigError(f"data.path {data.path} holds no rows for the {split} split")
            return rows
        return list(
            build_dataset("gsm_infinite", split, count, seed=data.seed, tokenizer=tokenizer, **data.options)
        )
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"data ({data.task}, options {data.options}): {err}") from None
