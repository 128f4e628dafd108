"""Materialise a task as a `datasets.Dataset` / `DatasetDict` with fixed, disjoint splits.

    build_dataset("rule110", "train", 10_000, steps=12)
    build_dataset("depo", "test", 500, config=DepoConfig.for_test(hops=(8,)))
    build_dataset("gsm_infinite", "test", 1600, config=GSMInfiniteConfig.paper(), tokenizer=tok)
    build_dataset_dict("rule110", {"train": 10_000, "validation": 500, "test": 1_000}, steps=12)

Rows of the synthetic tasks carry their tokens, text, input_ids (ids of the task's word
tokenizer, `task_tokenizer(...)`), loss_mask and target_start, ready for `SleepCollator`;
GSM-Infinite rows are in the Hub format, plus the sleep-layout features when a model
tokenizer is given. Every dataset's `info.description` records the task options. Splits
use the seeds and the content-hash partition of `splits` (disjoint by construction).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import datasets
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from .depo import DepoConfig, DepoTask
from .gsm_infinite.prompts import sleep_features
from .gsm_infinite.task import GSMInfiniteConfig, GSMInfiniteTask
from .rule110 import Rule110Config, Rule110Task
from .splits import generate_split

TASKS: dict[str, tuple[type, type]] = {
    "rule110": (Rule110Task, Rule110Config),
    "depo": (DepoTask, DepoConfig),
    "gsm_infinite": (GSMInfiniteTask, GSMInfiniteConfig),
}


def make_task(name: str, config: Any = None, **options: Any) -> Any:
    """The task object for `name` ("rule110", "depo", "gsm_infinite"); `options` override
    fields of `config` (or of the task's default config)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASKS)}")
    task_class, config_class = TASKS[name]
    if config is not None and not isinstance(config, config_class):
        raise ValueError(
            f"config for {name!r} must be a {config_class.__name__}, got {type(config).__name__}"
        )
    return task_class(config, **options)


def task_tokenizer(name: str, config: Any = None, **options: Any) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of a synthetic task (GSM-Infinite uses the model's own)."""
    task = make_task(name, config, **options)
    if not hasattr(task, "tokenizer"):
        raise ValueError(f"task {name!r} has no tokenizer of its own: use your model's tokenizer")
    return task.tokenizer()


def build_dataset(
    task: str,
    split: str,
    num_examples: int,
    *,
    seed: int = 0,
    config: Any = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    sleep_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> datasets.Dataset:
    """`num_examples` rows of `split` ("train", "validation", "test") of `task`.

    `seed=0` is the fixed default; another seed draws other examples from the same split
    (still disjoint from the other splits). For GSM-Infinite, `tokenizer` adds the
    sleep-layout features (`sleep_options` go to `gsm_infinite.sleep_features`)."""
    task_object = make_task(task, config, **options)
    rows = generate_split(task_object, split, num_examples, seed=seed)
    if task == "gsm_infinite" and tokenizer is not None:
        for row in rows:
            row.update(sleep_features(row, tokenizer, **dict(sleep_options or {})))
    elif tokenizer is not None or sleep_options:
        raise ValueError(
            f"tokenizer / sleep_options apply to gsm_infinite only; {task!r} has its own vocabulary"
        )
    description = json.dumps({**task_object.describe(), "split": split, "seed": seed}, default=str)
    if rows:
        return datasets.Dataset.from_list(rows, info=datasets.DatasetInfo(description=description))
    return datasets.Dataset.from_dict({}, info=datasets.DatasetInfo(description=description))


def build_dataset_dict(
    task: str,
    sizes: Mapping[str, int],
    *,
    seed: int = 0,
    config: Any = None,
    configs: Mapping[str, Any] | None = None,
    **options: Any,
) -> datasets.DatasetDict:
    """Several splits at once: `sizes` maps split -> number of examples; `config` applies to
    every split unless `configs` gives one for it (e.g. Depo's test protocol); `options`
    override fields of either."""
    configs = dict(configs or {})
    unknown = sorted(set(configs) - set(sizes))
    if unknown:
        raise ValueError(f"configs given for splits {unknown} that are not in sizes {sorted(sizes)}")
    return datasets.DatasetDict(
        {
            split: build_dataset(task, split, n, seed=seed, config=configs.get(split, config), **options)
            for split, n in sizes.items()
        }
    )
