"""Laying out the grid: one data group per (task, difficulty), built lazily, each with what its
cells need to score (a task reader, token ids, pad id); prepare_grid validates the spec and lays
out the cells without loading the model or generating data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checks import is_int, nearest_existing, writable_directory
from ..sleep.settings import SleepSettings
from ..tasks.depo import DepoConfig, DepoTask
from ..tasks.gsm_infinite.loader import SUBSETS, check_ops, load_gsm_infinite
from ..tasks.gsm_infinite.prompts import ANSWER_CHUNKS, QUESTION_POSITIONS, with_generation_prompts
from ..tasks.gsm_infinite.realistic import check_realistic_op
from ..tasks.gsm_infinite.symbolic import check_symbolic_op
from ..tasks.gsm_infinite.task import GSMInfiniteConfig, GSMInfiniteTask
from ..tasks.reading import DepoReader, Rule110Reader
from ..tasks.rule110 import Rule110Config, Rule110Task
from ..tasks.splits import generate_split
from .spec import (
    _DTYPES,
    DIFFICULTY_NAMES,
    EVAL_TASKS,
    EvalInputError,
    EvalSpec,
    _Cell,
    _check_device,
    _check_int_list,
    _check_positive,
    _DataGroup,
    _fail,
    _Grid,
    _load_tokenizer,
    _make_config,
    _pad_id,
    _read_model_config,
    _symbol_ids,
    _task_options,
)

__all__ = ["prepare_grid"]


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
    ancestor = nearest_existing(out_dir.parent)
    if not writable_directory(ancestor):
        _fail(f"cannot write under {ancestor}; choose another --out")
    model_dir = Path(spec.model).expanduser()
    config = _read_model_config(model_dir)
    try:
        settings = SleepSettings(
            window=spec.window if spec.window is not None else config.get("window", 2048),
            eviction=spec.eviction if spec.eviction is not None else config.get("eviction", "hard"),
            tolerance=spec.tolerance if spec.tolerance is not None else config.get("tolerance", 0.0),
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
    if settings.tolerance:  # adaptive sleep is another cell (absent otherwise: older results keep their keys)
        common["tolerance"] = settings.tolerance

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
                lambda g=generate: _generation_rows(g(), tokenizer, spec),
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
        return _generation_rows(rows, tokenizer, spec)

    setting = {**layout, "data": str(data_path.resolve()), "subset": spec.subset}
    return [_DataGroup("gsm_infinite", op, setting, lambda op=op: build(op)) for op in difficulties]


def _test_split(task: Any, spec: EvalSpec) -> Callable[[], list[dict[str, Any]]]:
    """The task's held-out rows: always the test split, drawn from its fixed seed."""
    return lambda: generate_split(task, "test", spec.num_examples, seed=spec.seed)


def _generation_rows(rows: list[dict[str, Any]], tokenizer: Any, spec: EvalSpec) -> list[dict[str, Any]]:
    return with_generation_prompts(
        rows, tokenizer, question_position=spec.question_position, answer_chunk=spec.answer_chunk
    )
