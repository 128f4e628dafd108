"""The evaluation command line: ``sleep-retrofit eval`` and ``python eval/evaluate.py``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..arguments import OneLineParser
from ..tasks.gsm_infinite.loader import SUBSETS
from ..tasks.gsm_infinite.prompts import ANSWER_CHUNKS, QUESTION_POSITIONS
from .grid import run_grid
from .report import markdown_report
from .spec import _DTYPES, DEFAULT_DIFFICULTIES, EVAL_TASKS, EvalInputError, EvalSpec

__all__ = ["default_out", "add_eval_arguments", "spec_from_args", "run_eval", "main"]


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
    parser.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="T",
        help="adaptive sleep: stop a chunk's passes once the state changes by less than T (N = the cap)",
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
        tolerance=args.tolerance,
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
