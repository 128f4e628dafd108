"""What an evaluation is asked to do (EvalSpec), the checks on it, and the grid's data structures.

Every bad input raises EvalInputError (a ValueError) before any model is loaded."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..checks import is_int
from ..sleep.settings import SleepSettings
from ..tasks.gsm_infinite.task import PAPER_CONTEXT_TOKENS

__all__ = [
    "EVAL_TASKS",
    "DIFFICULTY_NAMES",
    "DEFAULT_DIFFICULTIES",
    "RESULTS_JSON",
    "RESULTS_MARKDOWN",
    "RESULTS_PLOT",
    "EvalInputError",
    "EvalSpec",
    "GridResult",
]

EVAL_TASKS: tuple[str, ...] = ("rule110", "depo", "gsm_infinite")

# The name of each task's difficulty axis, as the paper and the task modules call it.
DIFFICULTY_NAMES: dict[str, str] = {"rule110": "t", "depo": "k", "gsm_infinite": "op"}

# Paper settings: Rule 110 at t <= 16 (N = 1) and t = 32 (N = 1..4); Depo's test protocol
# (powers of two up to 16); GSM-Infinite reported at ops 2, 4, 6, 8.
DEFAULT_DIFFICULTIES: dict[str, tuple[int, ...]] = {
    "rule110": (4, 8, 16, 32),
    "depo": (1, 2, 4, 8, 16),
    "gsm_infinite": (2, 4, 6, 8),
}

# The grid axis of each task may not also be set through task options.
_AXIS_FIELDS: dict[str, tuple[str, ...]] = {
    "rule110": ("steps",),
    "depo": ("hops",),
    "gsm_infinite": ("ops", "subset", "context_tokens", "count_tokens"),
}

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

RESULTS_JSON = "results.json"

RESULTS_MARKDOWN = "results.md"

RESULTS_PLOT = "accuracy.png"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class EvalInputError(ValueError):
    """Bad evaluation input (paths, tasks, grid values), found before any model is loaded."""


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate. Difficulties are per task: `steps` (Rule 110 t), `hops` (Depo k),
    `ops` (GSM-Infinite op counts).

    Args:
        model: a converted model directory (``sleep-retrofit convert`` or save_pretrained of a
            SleepRetrofitForCausalLM). Its tokenizer, if saved there, maps the synthetic tasks'
            symbols (the task's own ids otherwise); GSM-Infinite requires it.
        tasks: some of "rule110", "depo", "gsm_infinite".
        passes: the N values.
        num_examples: examples per cell (for loaded GSM-Infinite data: at most this many per op).
        batch_size: examples per forward / generate call.
        out: output directory (results.json, results.md, accuracy.png).
        window, eviction: override the model's L and eviction mode (None = the model's).
        tolerance: adaptive sleep (SleepSettings.tolerance; None = the model's, 0 = always N
            passes); records then hold ``mean_passes``, the passes run per consolidated chunk.
        seed: which draw of the fixed test split (0 = the project default); never training data.
        subset: GSM-Infinite subset for generated data (default "medium"); for loaded data it
            sets the required fields (default: inferred).
        data: local Hub-format GSM-Infinite files (a file or a directory); None = generate.
        context_tokens: distractor budget of generated GSM-Infinite problems (an int, "8k", or a
            (low, high) range; default the paper's 2,000-3,300), counted with the model tokenizer.
        question_position, answer_chunk: the GSM-Infinite sleep layout (tasks.gsm_infinite.prompts).
        max_new_tokens: GSM-Infinite generation length.
        task_options: per-task config fields, e.g. {"rule110": {"boundary": "zero"},
            "depo": {"max_nodes": 50}} (not the grid axes).
        device: "cpu", "cuda", ... (None = cuda when available).
        dtype: "float32", "bfloat16" or "float16" (None = as saved).
        save_outputs: also store each example's prediction in the records.
        progress: show a tqdm progress bar.
    """

    model: str | os.PathLike
    tasks: Sequence[str] = ("rule110",)
    passes: Sequence[int] = (1, 2, 4)
    steps: Sequence[int] = DEFAULT_DIFFICULTIES["rule110"]
    hops: Sequence[int] = DEFAULT_DIFFICULTIES["depo"]
    ops: Sequence[int] = DEFAULT_DIFFICULTIES["gsm_infinite"]
    num_examples: int = 200
    batch_size: int = 16
    out: str | os.PathLike = "eval_results"
    window: int | None = None
    eviction: str | None = None
    tolerance: float | None = None
    seed: int = 0
    subset: str | None = None
    data: str | os.PathLike | None = None
    context_tokens: int | str | tuple[int, int] = PAPER_CONTEXT_TOKENS
    question_position: str = "before"
    answer_chunk: str = "separate"
    max_new_tokens: int = 32
    task_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None
    save_outputs: bool = False
    progress: bool = True

    def difficulties(self, task: str) -> tuple[int, ...]:
        values = {"rule110": self.steps, "depo": self.hops, "gsm_infinite": self.ops}[task]
        return tuple(dict.fromkeys(values))  # keep order, drop repeats


@dataclass
class _Cell:
    """One grid cell: its identity (the resume key) and, once prepared, its data."""

    task: str
    difficulty: int
    passes: int
    setting: dict[str, Any]
    group: _DataGroup

    def key(self) -> str:
        return _record_key(self.task, self.difficulty, self.passes, self.setting)


@dataclass
class _DataGroup:
    """The examples of one (task, difficulty), shared by its cells (one per N); built lazily so
    a resumed run that has nothing left to do generates nothing."""

    task: str
    difficulty: int
    setting: dict[str, Any]  # the task's options that define its cells (with the common ones)
    build: Callable[[], list[dict[str, Any]]]
    task_object: Any = None
    rows: list[dict[str, Any]] | None = None

    def examples(self) -> list[dict[str, Any]]:
        if self.rows is None:
            self.rows = self.build()
        return self.rows


@dataclass
class _Grid:
    """A validated grid: everything `run_grid` needs, before the model is loaded."""

    spec: EvalSpec
    model_dir: Path
    out_dir: Path
    settings: SleepSettings  # window and eviction of the evaluation; passes vary per cell
    vocab_size: int
    tokenizer: Any
    cells: list[_Cell]


@dataclass
class GridResult:
    """What `run_grid` wrote: the records of this grid (in grid order) and the file paths."""

    records: list[dict[str, Any]]
    json_path: Path
    markdown_path: Path
    plot_path: Path | None
    evaluated: int  # cells computed in this run (the others were already in the JSON)


def _record_key(task: str, difficulty: int, passes: int, setting: Mapping[str, Any]) -> str:
    return json.dumps(
        {"task": task, "difficulty": difficulty, "passes": passes, "setting": setting},
        sort_keys=True,
        default=str,
    )


def _fail(message: str) -> None:
    raise EvalInputError(message)


def _check_int_list(name: str, values: Any, minimum: int | None = None) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        _fail(f"{name} must be a non-empty list of ints, got {values!r}")
    for value in values:
        if not is_int(value):
            _fail(f"{name} must be ints, got {value!r}")
        if minimum is not None and value < minimum:
            _fail(f"{name} must be >= {minimum}, got {value}")
    return tuple(values)


def _check_positive(name: str, value: Any) -> int:
    if not is_int(value) or value < 1:
        _fail(f"{name} must be a positive int, got {value!r}")
    return value


def _check_device(name: Any) -> None:
    """A device this machine has and that can hold a model's values ('meta' holds none)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        _fail(f"device must be a torch device such as 'cpu' or 'cuda:0', got {name!r}")
    if device.type == "meta":
        _fail("device 'meta' holds no values; evaluate on 'cpu' or 'cuda'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            _fail(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            _fail(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if backend is None or not getattr(backend, "is_available", lambda: False)():
            _fail(f"device {name!r} is not available here; use --device cpu")


def _read_model_config(model_dir: Path) -> dict[str, Any]:
    """config.json of a converted checkpoint whose config, weight files and tokenizer files passed
    the checks a load needs (convert.check_checkpoint), as a dict."""
    from ..converted import check_checkpoint
    from ..errors import ConvertError

    if not model_dir.exists():
        _fail(f"model directory does not exist: {model_dir}")
    if not model_dir.is_dir():
        _fail(f"model must be a directory (a converted checkpoint), got the file {model_dir}")
    try:
        check_checkpoint(model_dir)
    except ConvertError as err:
        raise EvalInputError(str(err)) from None
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def _load_tokenizer(model_dir: Path) -> Any:
    """The tokenizer saved in the model directory, or None when there is none."""
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as err:
        raise EvalInputError(f"cannot load the tokenizer saved in {model_dir}: {err}") from None


def _task_options(spec: EvalSpec, task: str) -> dict[str, Any]:
    options = dict(spec.task_options.get(task, {}))
    axis = [name for name in _AXIS_FIELDS[task] if name in options]
    if axis:
        _fail(f"task_options for {task!r} may not set {axis}: the grid (or its own option) sets them")
    return options


def _make_config(config_class: type, task: str, **fields: Any) -> Any:
    """A task config, with unknown option names and bad values reported as input errors."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - known)
    if unknown:
        _fail(f"unknown {task} option(s) {unknown}; expected some of {sorted(known)}")
    try:
        return config_class(**fields)
    except ValueError as err:
        raise EvalInputError(f"{task}: {err}") from None


def _symbol_ids(task: Any, tokenizer: Any, model_dir: Path, vocab_size: int) -> dict[str, int]:
    """Token -> model id for a synthetic task: through the model's tokenizer when one is saved
    (so a model trained with any vocabulary holding the task's symbols works), else the
    task's own word-tokenizer ids."""
    specials = len(task.vocabulary.tokens) - len(task.symbols())
    symbols = task.vocabulary.tokens[specials:]
    if tokenizer is None:
        ids = {token: i for i, token in enumerate(task.vocabulary.tokens)}
    else:
        vocab = tokenizer.get_vocab()
        missing = [s for s in symbols if s not in vocab]
        if missing:
            shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
            _fail(
                f"the tokenizer in {model_dir} has no token for {len(missing)} of the {task.name} symbols "
                f"({shown}); evaluate with the tokenizer the model was trained with "
                f"(sleep_retrofit.tasks.task_tokenizer({task.name!r}, ...))"
            )
        ids = {s: vocab[s] for s in symbols}
    largest = max(ids[s] for s in symbols)
    if largest >= vocab_size:
        _fail(
            f"the {task.name} symbols need token ids up to {largest}, but the model in {model_dir} has "
            f"vocab_size={vocab_size}; was it trained on this task?"
        )
    return ids


def _pad_id(tokenizer: Any, fallback: int = 0) -> int:
    if tokenizer is None:
        return fallback
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return fallback
