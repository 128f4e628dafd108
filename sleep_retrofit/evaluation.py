"""The evaluation grid: a converted model x tasks x N values x difficulties -> JSON, markdown, plot.

    python eval/evaluate.py --model DIR --task rule110 depo --passes 1 2 4 --steps 4 8 16 32

Every cell of the grid (task, difficulty, N) is scored on held-out data and appended to
``results.json`` in the output directory, which is rewritten atomically after each cell; a
rerun skips the cells already there, so an interrupted evaluation resumes where it stopped.
``results.md`` holds one table per task (difficulty rows, N columns) and ``accuracy.png`` the
accuracy against difficulty, one line per N (matplotlib, the ``plot`` extra).

The difficulty axis of each task:

=============  =====  ====================================================================
task           axis   data, and how a model's answer is scored
=============  =====  ====================================================================
rule110        t      Rule 110 steps. Test split generated from the fixed seed; label j's
                      prediction is the argmax over string j's two bit tokens, decoded from
                      the model's own labels 0..j-1 (free running, one forward per label:
                      feeding gold labels back would leak t); ``tasks.reading`` (exact
                      match over the labels, per-label accuracy). The loss is teacher-forced.
depo           k      hops, Depo's test protocol (n = max_nodes, one k per cell); greedy
                      decoding of every answer token in the training layout, each after the
                      model's own earlier answer tokens (free running; the query tokens are
                      given); a word counts as right when all its tokens are; ``tasks.reading``.
                      Also the mean teacher-forced loss per answer token (the paper reports
                      Depo as test loss per k).
gsm_infinite   op     op count. Generated (test split) or loaded from local Hub files
                      (``data``); the sleep layout without chain of thought, cut after the cue
                      "Answer:"; greedy generation of ``max_new_tokens``; the output is scored
                      as "Answer:" + generated text with ``score_gsm_infinite`` (the official
                      rules; the model directory's tokenizer).
=============  =====  ====================================================================

Every batch is laid out by :class:`~sleep_retrofit.tasks.SleepCollator` with the model's
window L as the chunk size: contexts end on a chunk boundary and the question/answer part
is its own chunk, as in training, with left padding where lengths differ. One model load
serves every N: ``passes`` is a per-call argument of the model.

Bad input (a missing model directory or data path, an unknown task or subset, difficulties
out of range, N < 1, ...) raises :class:`EvalInputError` (a ValueError) before any model is
loaded; :func:`run_eval` turns it into a one-line message and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .arguments import OneLineParser
from .checks import is_int
from .modeling import free_running_targets
from .sleep.settings import SleepSettings
from .tasks.collate import SleepCollator
from .tasks.depo import DepoConfig, DepoTask
from .tasks.gsm_infinite.loader import SUBSETS, check_ops, load_gsm_infinite
from .tasks.gsm_infinite.prompts import ANSWER_CHUNKS, QUESTION_POSITIONS, sleep_features
from .tasks.gsm_infinite.realistic import check_realistic_op
from .tasks.gsm_infinite.scoring import leaderboard_score, score_gsm_infinite
from .tasks.gsm_infinite.symbolic import check_symbolic_op
from .tasks.gsm_infinite.task import PAPER_CONTEXT_TOKENS, GSMInfiniteConfig, GSMInfiniteTask
from .tasks.reading import DepoReader, Rule110Reader, read_batch
from .tasks.rule110 import Rule110Config, Rule110Task
from .tasks.splits import generate_split

__all__ = [
    "DEFAULT_DIFFICULTIES",
    "DIFFICULTY_NAMES",
    "EVAL_TASKS",
    "EvalInputError",
    "EvalSpec",
    "GridResult",
    "add_eval_arguments",
    "evaluate_cell",
    "load_model",
    "main",
    "markdown_report",
    "plot_results",
    "prepare_grid",
    "run_eval",
    "run_grid",
    "spec_from_args",
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
_HEADLINE: dict[str, str] = {"rule110": "exact match", "depo": "accuracy", "gsm_infinite": "accuracy"}
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


# ----------------------------------------------------------------------------- validation
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
    from .converted import check_checkpoint
    from .errors import ConvertError

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


def prepare_grid(spec: EvalSpec) -> _Grid:
    """Validate `spec` and lay out the grid's cells, without loading the model or generating
    data. Every bad input raises :class:`EvalInputError` here."""
    if not isinstance(spec, EvalSpec):
        raise TypeError(f"spec must be an EvalSpec, got {type(spec).__name__}")
    tasks = spec.tasks
    if isinstance(tasks, str):
        tasks = (tasks,)
    if not tasks:
        _fail("tasks must name at least one task")
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        _fail(f"unknown task(s) {unknown}; expected some of {list(EVAL_TASKS)}")
    tasks = tuple(dict.fromkeys(tasks))
    stray = sorted(set(spec.task_options) - set(EVAL_TASKS))
    if stray:
        _fail(f"task_options given for unknown task(s) {stray}; expected some of {list(EVAL_TASKS)}")
    passes = tuple(dict.fromkeys(_check_int_list("passes (N)", spec.passes, minimum=1)))
    _check_positive("num_examples", spec.num_examples)
    _check_positive("batch_size", spec.batch_size)
    if not is_int(spec.seed):
        _fail(f"seed must be an int, got {spec.seed!r}")
    if spec.dtype is not None and spec.dtype not in _DTYPES:
        _fail(f"dtype must be one of {list(_DTYPES)}, got {spec.dtype!r}")
    if spec.device is not None:
        _check_device(spec.device)

    out_dir = Path(spec.out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        _fail(f"out must be a directory, got the file {out_dir}")
    ancestor = out_dir.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        _fail(f"cannot write under {ancestor}; choose another --out")
    model_dir = Path(spec.model).expanduser()
    config = _read_model_config(model_dir)
    try:
        settings = SleepSettings(
            window=spec.window if spec.window is not None else config.get("window", 2048),
            eviction=spec.eviction if spec.eviction is not None else config.get("eviction", "hard"),
        )
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    base_config = config.get("base_config") or {}
    # A window past the base's positions would allocate L x L attention for nothing (1e8: OOM).
    limit = config.get("max_position_embeddings") or base_config.get("max_position_embeddings")
    if isinstance(limit, int) and settings.window > limit:
        _fail(
            f"window (L) {settings.window} is larger than the position limit of {model_dir} "
            f"(max_position_embeddings {limit}); choose a window in 1..{limit}"
        )
    vocab_size = config.get("vocab_size") or base_config.get("vocab_size")
    if not isinstance(vocab_size, int):
        _fail(f"{model_dir}/config.json names no vocab_size")
    tokenizer = _load_tokenizer(model_dir)
    common = {
        "window": settings.window,
        "eviction": settings.eviction,
        "max_examples": spec.num_examples,
        "seed": spec.seed,
        "dtype": spec.dtype,
    }

    source = _GroupSource(spec, common, tokenizer, model_dir, vocab_size)
    builders = {"rule110": _rule110_groups, "depo": _depo_groups, "gsm_infinite": _gsm_groups}
    groups: list[_DataGroup] = []
    for task in tasks:
        difficulties = _check_int_list(
            f"{task} difficulties ({DIFFICULTY_NAMES[task]})", spec.difficulties(task)
        )
        groups += builders[task](source, difficulties, _task_options(spec, task))

    cells = [_Cell(group.task, group.difficulty, n, group.setting, group) for group in groups for n in passes]
    return _Grid(spec, model_dir, out_dir, settings, vocab_size, tokenizer, cells)


@dataclass(frozen=True)
class _GroupSource:
    """What every task's group builder reads besides its difficulties and options: the spec, the
    setting fields common to all cells, and the model's tokenizer, directory and vocabulary size."""

    spec: EvalSpec
    common: dict[str, Any]
    tokenizer: Any
    model_dir: Path
    vocab_size: int

    def synthetic(self, task: Any, config: Any, axis: str) -> tuple[dict[str, int], int, dict[str, Any]]:
        """A synthetic task's (token -> model id, pad id, cell setting); the setting holds the
        task config's fields except the grid axis `axis`."""
        ids = _symbol_ids(task, self.tokenizer, self.model_dir, self.vocab_size)
        pad = _pad_id(self.tokenizer, task.vocabulary.pad_token_id)
        fields = {k: v for k, v in dataclasses.asdict(config).items() if k != axis}
        return ids, pad, {**self.common, **fields}


def _rule110_groups(
    source: _GroupSource, difficulties: Sequence[int], options: dict[str, Any]
) -> list[_DataGroup]:
    groups = []
    for t in difficulties:
        config = _make_config(Rule110Config, "rule110", **options, steps=t)
        task = Rule110Task(config)
        ids, pad, setting = source.synthetic(task, config, "steps")
        reader = Rule110Reader.for_ids(task, ids)
        groups.append(_DataGroup("rule110", t, setting, _test_split(task, source.spec), (reader, ids, pad)))
    return groups


def _depo_groups(
    source: _GroupSource, difficulties: Sequence[int], options: dict[str, Any]
) -> list[_DataGroup]:
    groups = []
    base = _make_config(DepoConfig, "depo", **options)
    tokenizer = source.tokenizer
    for k in difficulties:
        if not 1 <= k <= base.max_hops:
            _fail(f"depo hops (k) must be in [1, max_hops={base.max_hops}], got {k}")
        config = DepoConfig.for_test(hops=(k,), **options)
        task = DepoTask(config)
        ids, pad, setting = source.synthetic(task, config, "hops")
        # Predictions are read back through the whole model vocabulary (a wrong answer may be
        # any token); ids beyond it read as None.
        names = {i: token for token, i in (tokenizer.get_vocab() if tokenizer is not None else ids).items()}
        reader = DepoReader(task, names)
        groups.append(_DataGroup("depo", k, setting, _test_split(task, source.spec), (reader, ids, pad)))
    return groups


def _gsm_groups(
    source: _GroupSource, difficulties: Sequence[int], options: dict[str, Any]
) -> list[_DataGroup]:
    spec, tokenizer, model_dir = source.spec, source.tokenizer, source.model_dir
    if spec.subset is not None and spec.subset not in SUBSETS:
        _fail(f"unknown GSM-Infinite subset {spec.subset!r}; expected one of {list(SUBSETS)}")
    if spec.question_position not in QUESTION_POSITIONS:
        _fail(f"question_position must be one of {list(QUESTION_POSITIONS)}, got {spec.question_position!r}")
    if spec.answer_chunk not in ANSWER_CHUNKS:
        _fail(f"answer_chunk must be one of {list(ANSWER_CHUNKS)}, got {spec.answer_chunk!r}")
    _check_positive("max_new_tokens", spec.max_new_tokens)
    if tokenizer is None:
        _fail(
            f"gsm_infinite needs the model's tokenizer, and {model_dir} has none; "
            "save it there with tokenizer.save_pretrained(DIR)"
        )
    layout = {
        **source.common,
        "question_position": spec.question_position,
        "answer_chunk": spec.answer_chunk,
        "max_new_tokens": spec.max_new_tokens,
    }
    if spec.data is not None:
        return _gsm_loaded_groups(spec, difficulties, options, layout, tokenizer)

    subset = spec.subset or "medium"
    check = check_symbolic_op if subset == "symbolic" else check_realistic_op
    for op in difficulties:
        try:
            check(op)
        except ValueError as err:
            raise EvalInputError(str(err)) from None

    def count_tokens(text: str) -> int:
        # Distractor budgets in the model's own tokens, as the paper states problem lengths.
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    groups = []
    for op in difficulties:
        config = _make_config(
            GSMInfiniteConfig,
            "gsm_infinite",
            **options,
            subset=subset,
            ops=(op,),
            context_tokens=spec.context_tokens,
            count_tokens=count_tokens,
        )
        task = GSMInfiniteTask(config)
        generate = _test_split(task, spec)
        setting = {
            **layout,
            "data": None,
            "subset": subset,
            "context_tokens": config.context_tokens,
            "templates": list(config.templates),
        }
        groups.append(
            _DataGroup(
                "gsm_infinite",
                op,
                setting,
                lambda g=generate: _with_sleep_features(g(), tokenizer, spec),
                task,
            )
        )
    return groups


def _gsm_loaded_groups(
    spec: EvalSpec,
    difficulties: Sequence[int],
    options: dict[str, Any],
    layout: dict[str, Any],
    tokenizer: Any,
) -> list[_DataGroup]:
    """GSM-Infinite cells over local Hub-format files: the first `num_examples` rows per op."""
    data_path = Path(spec.data).expanduser()
    if not data_path.exists():
        _fail(f"GSM-Infinite data path does not exist: {data_path}")
    if options:
        _fail(
            f"task_options for gsm_infinite apply to generated data only, not to --data ({sorted(options)})"
        )
    try:
        check_ops(difficulties)
    except ValueError as err:
        raise EvalInputError(str(err)) from None
    loaded: list[Any] = []

    def load_all() -> Any:
        # One read of the files serves every op; the loader checks the fields and that each op
        # is present (a ValueError naming what was found, before the model is loaded).
        if not loaded:
            loaded.append(load_gsm_infinite(data_path, subset=spec.subset, ops=list(difficulties)))
        return loaded[0]

    def build(op: int) -> list[dict[str, Any]]:
        rows = [row for row in load_all() if row["op"] == op][: spec.num_examples]
        return _with_sleep_features(rows, tokenizer, spec)

    setting = {**layout, "data": str(data_path.resolve()), "subset": spec.subset}
    return [_DataGroup("gsm_infinite", op, setting, lambda op=op: build(op)) for op in difficulties]


def _test_split(task: Any, spec: EvalSpec) -> Callable[[], list[dict[str, Any]]]:
    """The task's held-out rows: always the test split, drawn from its fixed seed."""
    return lambda: generate_split(task, "test", spec.num_examples, seed=spec.seed)


def _with_sleep_features(rows: list[dict[str, Any]], tokenizer: Any, spec: EvalSpec) -> list[dict[str, Any]]:
    """GSM-Infinite rows plus their generation prompt in the sleep layout (cut after "Answer:")."""
    out = []
    for row in rows:
        features = sleep_features(
            row,
            tokenizer,
            question_position=spec.question_position,
            answer_chunk=spec.answer_chunk,
            include_answer=False,
        )
        out.append({**row, **features})
    return out


# ----------------------------------------------------------------------------- the model
def load_model(model_dir: Path, device: str | None = None, dtype: str | None = None) -> torch.nn.Module:
    """Load a converted checkpoint for evaluation (eval mode, on `device`)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": _DTYPES[dtype]} if dtype is not None else {}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval()


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _batches(rows: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def _collated_batches(
    model: torch.nn.Module,
    rows: Sequence[dict[str, Any]],
    ids: Mapping[str, int],
    pad_id: int,
    settings: SleepSettings,
    batch_size: int,
) -> Iterator[tuple[Sequence[dict[str, Any]], dict[str, torch.Tensor]]]:
    """The synthetic-task rows in batches laid out by SleepCollator, on the model's device."""
    collator = SleepCollator(settings.window, pad_id)
    device = _model_device(model)
    for batch_rows in _batches(rows, batch_size):
        features = [
            {
                "input_ids": [ids[token] for token in row["tokens"]],
                "loss_mask": row["loss_mask"],
                "target_start": row["target_start"],
            }
            for row in batch_rows
        ]
        batch = collator(features)
        yield batch_rows, {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "labels")}


def _evaluate_synthetic(
    model: torch.nn.Module, group: _DataGroup, settings: SleepSettings, passes: int, spec: EvalSpec, bar: Any
) -> dict[str, Any]:
    """Rule 110 or Depo: every answer decoded free running (from the model's own earlier answers:
    gold ones fed back would leak t, or facts about the same graph) and read and scored by the
    task's reader (tasks/reading.py), exactly as the trainer's periodic evaluation does."""
    reader, ids, pad = group.task_object
    rows = group.examples()
    predictions: list[Any] = []
    losses: list[float] = []
    for batch_rows, batch in _collated_batches(model, rows, ids, pad, settings, spec.batch_size):
        predicted, teacher_forced = free_running_targets(
            model,
            batch["input_ids"],
            batch["labels"],
            reader.candidates,
            attention_mask=batch["attention_mask"],
            passes=passes,
            window=settings.window,
            eviction=settings.eviction,
        )
        answers, batch_losses, _ = read_batch(reader, batch_rows, predicted, teacher_forced)
        predictions += answers
        losses += batch_losses
        if bar is not None:
            bar.update(len(batch_rows))
    record = {**reader.score(predictions, rows), "loss": sum(losses) / len(losses), "num_examples": len(rows)}
    if spec.save_outputs:
        record["outputs"] = predictions
    return record


def _evaluate_gsm(
    model: torch.nn.Module,
    group: _DataGroup,
    settings: SleepSettings,
    passes: int,
    spec: EvalSpec,
    bar: Any,
    tokenizer: Any,
) -> dict[str, Any]:
    rows = group.examples()
    pad_id = _pad_id(tokenizer)
    collator = SleepCollator(settings.window, pad_id)
    device = _model_device(model)
    outputs: list[str] = []
    for batch_rows in _batches(rows, spec.batch_size):
        batch = collator(
            [
                {"input_ids": r["input_ids"], "loss_mask": r["loss_mask"], "target_start": r["target_start"]}
                for r in batch_rows
            ]
        )
        input_ids = batch["input_ids"].to(device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=spec.max_new_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=tokenizer.eos_token_id,
            passes=passes,
            window=settings.window,
            eviction=settings.eviction,
        )
        texts = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        # The prompt ends with the cue "Answer:"; the scorer looks for it in the output.
        outputs.extend("Answer:" + text for text in texts)
        if bar is not None:
            bar.update(len(batch_rows))
    scores = score_gsm_infinite(outputs, rows)
    record = {
        "accuracy": scores["accuracy"],
        "num_examples": scores["count"],
        "subset": "symbolic" if rows[0].get("answer_list") is not None else _realistic_subset(rows),
    }
    if spec.save_outputs:
        record["outputs"] = outputs
    return record


def _realistic_subset(rows: Sequence[Mapping[str, Any]]) -> str:
    """medium / hard from the rows' `d` field (2 / 3), else "realistic"."""
    depth = rows[0].get("d")
    return {2: "medium", 3: "hard"}.get(depth, "realistic")


def evaluate_cell(model: torch.nn.Module, cell: _Cell, grid: _Grid, bar: Any = None) -> dict[str, Any]:
    """Score one grid cell; returns its record (without the identity fields)."""
    settings = grid.settings
    with torch.no_grad():
        if cell.task in ("rule110", "depo"):
            return _evaluate_synthetic(model, cell.group, settings, cell.passes, grid.spec, bar)
        return _evaluate_gsm(model, cell.group, settings, cell.passes, grid.spec, bar, grid.tokenizer)


# ----------------------------------------------------------------------------- results file
def _read_results(path: Path, model_dir: Path) -> dict[str, Any]:
    model = str(model_dir.resolve())
    if not path.exists():
        return {"model": model, "records": []}
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise EvalInputError(
            f"{path} is not valid JSON ({err}); move it away or choose another out"
        ) from None
    if not isinstance(results, dict) or not isinstance(results.get("records"), list):
        _fail(f"{path} is not an evaluation results file (no 'records' list)")
    if results.get("model") != model:
        _fail(
            f"{path} holds results of {results.get('model')!r}, not of {model!r}; "
            "choose another out directory"
        )
    return results


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers (and an interrupted run) see the old or the new
    file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _stored_key(record: Mapping[str, Any]) -> str | None:
    try:
        return _record_key(record["task"], record["difficulty"], record["passes"], record["setting"])
    except (KeyError, TypeError):
        return None


# ----------------------------------------------------------------------------- reports
def _format(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_report(records: Sequence[Mapping[str, Any]], title: str = "Evaluation") -> str:
    """One table per task and metric: difficulty rows, one column per N."""
    lines = [f"# {title}", ""]
    for task in dict.fromkeys(r["task"] for r in records):
        task_records = [r for r in records if r["task"] == task]
        first = task_records[0]["setting"]
        passes = sorted({r["passes"] for r in task_records})
        difficulties = list(dict.fromkeys(r["difficulty"] for r in task_records))
        by_cell = {(r["difficulty"], r["passes"]): r for r in task_records}
        axis = DIFFICULTY_NAMES[task]
        lines += [
            f"## {task}",
            "",
            f"window L = {first['window']}, {first['eviction']} eviction, up to {first['max_examples']} "
            f"test examples per cell (seed {first['seed']}).",
            "",
        ]
        headline = _HEADLINE[task]
        if task == "rule110":
            headline += f" (chance {task_records[0]['chance_exact_match']:.4g})"
        metrics = [("accuracy", headline)]
        if task == "rule110":
            metrics.append(("mean_per_label_accuracy", "mean per-label accuracy"))
        if task in ("rule110", "depo"):
            metrics.append(("loss", "loss per target token"))
        for key, label in metrics:
            lines += [
                f"**{label}**",
                "",
                f"| {axis} | " + " | ".join(f"N={n}" for n in passes) + " |",
                "|---:|" + "---:|" * len(passes),
            ]
            for d in difficulties:
                cells = [by_cell.get((d, n), {}).get(key) for n in passes]
                lines.append(f"| {d} | " + " | ".join(_format(v) for v in cells) + " |")
            lines.append("")
        if task == "rule110":
            lines += [
                "**per-string accuracy** (string 0 = the oldest)",
                "",
                f"| {axis} | " + " | ".join(f"N={n}" for n in passes) + " |",
                "|---:|" + "---:|" * len(passes),
            ]
            for d in difficulties:
                cells = [by_cell.get((d, n), {}).get("per_label_accuracy") for n in passes]
                text = ["–" if c is None else " / ".join(f"{v:.2f}" for v in c) for c in cells]
                lines.append(f"| {d} | " + " | ".join(text) + " |")
            lines.append("")
        if task == "gsm_infinite":
            scores = []
            for n in passes:
                accuracies = {d: by_cell[(d, n)]["accuracy"] for d in difficulties if (d, n) in by_cell}
                scores.append(leaderboard_score(accuracies))
            lines += [
                "**leaderboard score** (sum of accuracies over these op counts >= 2 until one is below 5%)",
                "",
                "| | " + " | ".join(f"N={n}" for n in passes) + " |",
                "|---|" + "---:|" * len(passes),
                "| score | " + " | ".join(f"{s:.3f}" for s in scores) + " |",
                "",
            ]
    return "\n".join(lines)


def plot_results(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """Accuracy against difficulty, one line per N, one panel per task (PNG). Without
    matplotlib (the `plot` extra) the plot is skipped with a warning and None returned."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        warnings.warn(
            "matplotlib is not installed (pip install 'sleep-retrofit[plot]'); skipping the accuracy plot",
            stacklevel=2,
        )
        return None
    tasks = list(dict.fromkeys(r["task"] for r in records))
    if not tasks:
        return None
    figure = Figure(figsize=(4.5 * len(tasks), 3.6), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        task_records = [r for r in records if r["task"] == task]
        for n in sorted({r["passes"] for r in task_records}):
            points = sorted((r["difficulty"], r["accuracy"]) for r in task_records if r["passes"] == n)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"N={n}")
        if task == "rule110":
            ax.axhline(task_records[0]["chance_exact_match"], color="grey", linestyle=":", label="chance")
        ax.set_xticks(sorted({r["difficulty"] for r in task_records}))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(DIFFICULTY_NAMES[task])
        ax.set_ylabel(_HEADLINE[task])
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------- the runner
def run_grid(spec: EvalSpec) -> GridResult:
    """Evaluate every cell of the grid not yet in ``out/results.json``; write the JSON after
    each cell, then the markdown table and the plot. Input errors raise EvalInputError before
    the model is loaded; the model is not loaded at all when every cell is already done."""
    grid = prepare_grid(spec)
    json_path = grid.out_dir / RESULTS_JSON
    results = _read_results(json_path, grid.model_dir)
    stored = {_stored_key(r): r for r in results["records"]}
    pending = [cell for cell in grid.cells if cell.key() not in stored]

    # Data before the model: loading Hub files can still reveal bad input (fields, op counts).
    for group in {id(cell.group): cell.group for cell in pending}.values():
        try:
            rows = group.examples()
        except (ValueError, FileNotFoundError) as err:
            raise EvalInputError(str(err)) from None
        if not rows:
            _fail(f"{group.task} {DIFFICULTY_NAMES[group.task]}={group.difficulty}: no examples")

    if pending:
        model = load_model(grid.model_dir, spec.device, spec.dtype)
        bar = None
        if spec.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(cell.group.examples()) for cell in pending), unit="ex", desc="eval")
        try:
            for cell in pending:
                if bar is not None:
                    bar.set_description(
                        f"{cell.task} {DIFFICULTY_NAMES[cell.task]}={cell.difficulty} N={cell.passes}"
                    )
                began = time.perf_counter()
                scores = evaluate_cell(model, cell, grid, bar)
                record = {
                    "task": cell.task,
                    "difficulty_name": DIFFICULTY_NAMES[cell.task],
                    "difficulty": cell.difficulty,
                    "passes": cell.passes,
                    **scores,
                    "seconds": time.perf_counter() - began,
                    "setting": cell.setting,
                }
                results["records"].append(record)
                stored[cell.key()] = record
                _write_atomically(json_path, json.dumps(results, indent=1, default=str) + "\n")
        finally:
            if bar is not None:
                bar.close()
    elif not json_path.exists():
        _write_atomically(json_path, json.dumps(results, indent=1) + "\n")

    records = [stored[cell.key()] for cell in grid.cells]
    markdown_path = grid.out_dir / RESULTS_MARKDOWN
    _write_atomically(markdown_path, markdown_report(records, title=f"Evaluation of {grid.model_dir}") + "\n")
    plot_path = plot_results(records, grid.out_dir / RESULTS_PLOT)
    return GridResult(records, json_path, markdown_path, plot_path, evaluated=len(pending))


# ----------------------------------------------------------------------------- command line
def _context_tokens(text: str) -> int | str | tuple[int, int]:
    """ "0", "2000", "8k" or a range "2000-3300"."""
    if "-" in text.strip("-"):
        low, high = text.split("-", 1)
        return (low.strip(), high.strip())  # type: ignore[return-value]  (parsed by the config)
    return text


def _task_option(text: str) -> tuple[str, str, Any]:
    task_field, sep, raw = text.partition("=")
    task, dot, name = task_field.partition(".")
    if not sep or not dot or not task or not name:
        raise argparse.ArgumentTypeError(
            f"expected TASK.FIELD=VALUE (e.g. rule110.boundary=zero), got {text!r}"
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    if isinstance(value, list):
        value = tuple(value)
    return task, name, value


# The command-line option of each task's difficulty axis: (option, task, metavar, what it is).
_DIFFICULTY_OPTIONS = (
    ("--steps", "rule110", "T", "Rule 110 steps t"),
    ("--hops", "depo", "K", "Depo hops k"),
    ("--ops", "gsm_infinite", "OP", "GSM-Infinite op counts"),
)


def default_out(model: str | os.PathLike) -> Path:
    """eval_results/<parent>-<name> of a model directory: trained models all end in ``.../model``,
    so the name alone would send two of them to the same place."""
    parts = Path(model).expanduser().resolve().parts[-2:]
    return Path("eval_results") / "-".join(part for part in parts if part != os.sep)


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the evaluation options to `parser` (for ``sleep-retrofit eval`` and eval/evaluate.py);
    pair with :func:`run_eval`."""
    parser.add_argument("--model", required=True, metavar="DIR", help="converted model directory")
    parser.add_argument(
        "--task",
        nargs="+",
        default=["rule110"],
        metavar="TASK",
        help=f"tasks to evaluate: {', '.join(EVAL_TASKS)} (default rule110)",
    )
    parser.add_argument(
        "--passes",
        nargs="+",
        type=int,
        default=[1, 2, 4],
        metavar="N",
        help="consolidation passes N to compare (default 1 2 4)",
    )
    for option, task, metavar, axis in _DIFFICULTY_OPTIONS:
        defaults = DEFAULT_DIFFICULTIES[task]
        parser.add_argument(
            option,
            nargs="+",
            type=int,
            default=list(defaults),
            metavar=metavar,
            help=f"{axis} (default {' '.join(map(str, defaults))})",
        )
    parser.add_argument(
        "--num-examples", type=int, default=200, metavar="N", help="test examples per cell (default 200)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="examples per batch (default 16)")
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        help="output directory for results.json/.md and accuracy.png "
        "(default eval_results/<parent>-<model directory name>, e.g. eval_results/rule110_tiny-model)",
    )
    parser.add_argument("--window", type=int, default=None, metavar="L", help="override the model's window L")
    parser.add_argument(
        "--eviction", default=None, choices=["hard", "sliding"], help="override the model's eviction mode"
    )
    parser.add_argument("--seed", type=int, default=0, help="draw of the fixed test split (default 0)")
    parser.add_argument(
        "--subset",
        default=None,
        metavar="SUBSET",
        help=f"GSM-Infinite subset: {', '.join(SUBSETS)} (default medium; inferred for --data)",
    )
    parser.add_argument(
        "--data",
        default=None,
        metavar="PATH",
        help="local Hub-format GSM-Infinite files (parquet/JSON, a file or directory)",
    )
    parser.add_argument(
        "--context-tokens",
        type=_context_tokens,
        default="2000-3300",
        metavar="TOKENS",
        help="distractor budget of generated GSM-Infinite problems: 0, 8k, or a range "
        "LOW-HIGH (default 2000-3300, the paper's)",
    )
    parser.add_argument(
        "--question-position",
        default="before",
        choices=list(QUESTION_POSITIONS),
        help="GSM-Infinite: question before (the paper) or after the problem",
    )
    parser.add_argument(
        "--answer-chunk",
        default="separate",
        choices=list(ANSWER_CHUNKS),
        help="GSM-Infinite: the answer cue in its own chunk, or sharing the last one",
    )
    parser.add_argument("--max-new-tokens", type=int, default=32, help="GSM-Infinite generation length")
    parser.add_argument(
        "--task-option",
        action="append",
        type=_task_option,
        default=[],
        metavar="TASK.FIELD=VALUE",
        help="a task config field, e.g. rule110.boundary=zero or depo.max_nodes=50 (repeatable)",
    )
    parser.add_argument("--device", default=None, help="torch device (default cuda when available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=list(_DTYPES), help="model dtype (default as saved)")
    parser.add_argument("--save-outputs", action="store_true", help="store each example's prediction")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def spec_from_args(args: argparse.Namespace) -> EvalSpec:
    """The :class:`EvalSpec` of parsed :func:`add_eval_arguments` options."""
    task_options: dict[str, dict[str, Any]] = {}
    for task, name, value in args.task_option:
        task_options.setdefault(task, {})[name] = value
    out = args.out if args.out is not None else default_out(args.model)
    return EvalSpec(
        model=args.model,
        tasks=tuple(args.task),
        passes=tuple(args.passes),
        steps=tuple(args.steps),
        hops=tuple(args.hops),
        ops=tuple(args.ops),
        num_examples=args.num_examples,
        batch_size=args.batch_size,
        out=out,
        window=args.window,
        eviction=args.eviction,
        seed=args.seed,
        subset=args.subset,
        data=args.data,
        context_tokens=args.context_tokens,
        question_position=args.question_position,
        answer_chunk=args.answer_chunk,
        max_new_tokens=args.max_new_tokens,
        task_options=task_options,
        device=args.device,
        dtype=args.dtype,
        save_outputs=args.save_outputs,
        progress=not args.no_progress,
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run the grid for parsed :func:`add_eval_arguments` options; print the tables and where
    the files are. Bad input prints one line to stderr and returns 2."""
    try:
        result = run_grid(spec_from_args(args))
    except EvalInputError as err:
        print(f"sleep-retrofit eval: error: {err}", file=sys.stderr)
        return 2
    print(markdown_report(result.records, title=f"Evaluation of {args.model}"))
    done = len(result.records) - result.evaluated
    print(f"{result.evaluated} cell(s) evaluated, {done} already in {result.json_path}")
    print(
        f"results: {result.json_path}, {result.markdown_path}"
        + (f", {result.plot_path}" if result.plot_path else "")
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(
        prog="evaluate.py",
        description="Evaluate a converted sleep-retrofit model on Rule 110, Depo and GSM-Infinite "
        "across N values and difficulties.",
    )
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))
