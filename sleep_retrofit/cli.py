"""The `sleep-retrofit` command line.

    sleep-retrofit convert --model PATH_OR_PRESET --out DIR [...]   base model -> sleep checkpoint
    sleep-retrofit info DIR                                         what a converted checkpoint is
    sleep-retrofit generate DIR --prompt TEXT [...]                 completion + sleep timings
    sleep-retrofit presets                                          the built-in tiny base models

Subcommands are small functions over the library (sleep_retrofit.convert). Every bad input
prints one line to stderr and exits with status 2 (argparse's convention), never a traceback,
and writes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch

from . import __version__
from .arguments import OneLineParser
from .checks import nearest_existing, writable_directory
from .convert import DTYPES, convert
from .converted import describe, load_converted
from .errors import ConvertError
from .evaluation import add_eval_arguments, run_eval
from .generation import timed_generate
from .presets import PRESETS
from .retrofit import FAST_WEIGHT_KINDS, format_parameter_count
from .sessions import SleepState, SleepStateError
from .sleep import EVICTION_MODES

Number = TypeVar("Number", int, float)


def _number_type(
    parse: Callable[[str], Number], accept: Callable[[Number], bool], expected: str
) -> Callable[[str], Number]:
    """An argparse `type`: `parse(text)`, rejected (``expected {expected}, got ...``) when it
    fails or when `accept` says no. A rejected int is shown as parsed; a rejected float as typed
    (its repr could differ from what the user wrote, e.g. 1e-400 -> 0.0)."""

    def parse_argument(text: str) -> Number:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            shown = value if isinstance(value, int) else repr(text)
            raise argparse.ArgumentTypeError(f"expected {expected}, got {shown}")
        return value

    return parse_argument


_positive_int = _number_type(int, lambda value: value >= 1, "a positive integer")
_non_negative_int = _number_type(int, lambda value: value >= 0, "a non-negative integer")
_positive_float = _number_type(float, lambda value: value > 0, "a positive number")
# Beyond these a softmax over logits / temperature under- or overflows (1e-300, inf) or the
# generator's seed overflows (1e23): refuse here, in one line, not deep inside torch.
_temperature = _number_type(float, lambda value: 1e-3 <= value <= 1e3, "a temperature in [0.001, 1000]")
_seed = _number_type(int, lambda value: 0 <= value < 2**63, "a seed in [0, 2**63)")
# Decoding is bounded in memory (the window), not in time: a million tokens is already hours.
MAX_NEW_TOKENS = 1_000_000
_new_tokens = _number_type(
    int, lambda value: 1 <= value <= MAX_NEW_TOKENS, f"an integer in [1, {MAX_NEW_TOKENS:,}]"
)


def _layer_list(text: str) -> list[int]:
    """ "3,7,11" -> [3, 7, 11]."""
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer indices like 3,7,11, got {text!r}"
        ) from None
    if any(i < 0 for i in indices):
        raise argparse.ArgumentTypeError(f"layer indices must be >= 0, got {text!r}")
    return indices


# ------------------------------------------------------------------------------------- commands


def _convert(args: argparse.Namespace) -> int:
    out = convert(
        args.model,
        args.out,
        fast_weights=args.fast_weights,
        insert_at=args.insert_at,
        every=args.every,
        with_mlp=args.with_mlp,
        passes=args.passes,
        window=args.window,
        eviction=args.eviction,
        loop_span=args.loop_span,
        dtype=args.dtype,
        overwrite=args.overwrite,
        adapter_only=args.adapter_only,
        trust_remote_code=args.trust_remote_code,
    )
    info = describe(out)
    print(f"wrote {out}")
    if args.window is None:
        window = info["sleep"]["window"]
        print(
            f"  window L={window}: the default, min(2048, the base's max_position_embeddings); "
            "--window sets it"
        )
    _print_info(info)
    return 0


def _loop_span_text(sleep: dict) -> str:
    start, end = sleep["loop_span"]
    return f"layers {start}..{end - 1}" + (" (family default)" if sleep["loop_span_is_default"] else "")


def _print_info(info: dict) -> None:
    plan, sleep = info["fast_weights"], info["sleep"]
    if plan["num_blocks"]:
        mlp = "with" if plan["with_mlp"] else "without"
        inserted = f"{plan['num_blocks']} {plan['kind']} block(s) {mlp} MLP after layers " + ", ".join(
            map(str, plan["insert_after"])
        )
    else:
        inserted = "none"
    rows = [
        (
            "base model",
            f"{info['architecture']} (model_type {info['model_type']}, family {info['family']}), "
            f"{info['num_layers']} layers, hidden {info['hidden_size']}, {info['dtype']}",
        ),
        (
            "parameters",
            f"{format_parameter_count(info['base_parameters'])} base, "
            f"+{format_parameter_count(info['added_parameters'])} added (+{info['percent_added']:.2f}%)",
        ),
        ("inserted blocks", inserted),
    ]
    if plan["native_layers"]:
        rows.append(("native fast weights", "jet layers " + ", ".join(map(str, plan["native_layers"]))))
    rows += [
        (
            "sleep",
            f"passes N={sleep['passes']}, window L={sleep['window']}, eviction {sleep['eviction']}, "
            f"loop body {_loop_span_text(sleep)}",
        ),
        ("tokenizer", "yes" if info["tokenizer"] else "none"),
        (
            "weights",
            f"{info['weights']['tensors']} tensors in {len(info['weights']['files'])} file(s), "
            f"{info['weights']['bytes'] / 2**20:,.1f} MiB, complete",
        ),
    ]
    reference = info.get("base_reference")
    if reference:
        rows.append(
            ("adapter only", f"base {reference['source']} (weights sha256 {reference['sha256'][:12]}...)")
        )
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def _info(args: argparse.Namespace) -> int:
    info = describe(args.dir)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(info["path"])
        _print_info(info)
    return 0


def _generate(args: argparse.Namespace) -> int:
    if not args.prompt:  # before loading anything
        raise ConvertError("prompt must be a non-empty string (--prompt TEXT)")
    model, tokenizer = load_converted(
        args.dir, passes=args.passes, window=args.window, eviction=args.eviction
    )
    report = timed_generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        seed=args.seed,
        warmup=not args.no_warmup,
    )
    s = report.settings
    ms = 1000.0
    print(f"completion ({report.new_tokens} tokens):")
    print(report.completion)
    print(
        f"--- {report.prompt_tokens} prompt tokens; passes N={s.passes}, window L={s.window}, "
        f"eviction {s.eviction}"
    )
    rate = report.prompt_tokens / report.ingestion_seconds if report.ingestion_seconds > 0 else float("inf")
    print(
        f"prompt ingestion        {report.ingestion_seconds:.3f} s ({rate:,.0f} tokens/s), of which "
        f"{report.prompt_consolidation_seconds:.3f} s in {report.prompt_consolidations} consolidation(s)"
    )
    note = ""
    if s.passes == 1 and report.evictions > report.consolidations:
        note = "; with N=1 a chunk's wake pass is its consolidation, nothing is re-run"
    print(
        f"consolidation           {report.consolidations} chunk(s) in {report.consolidation_seconds:.3f} s "
        f"({report.evictions} eviction(s) in prompt and decode{note})"
    )
    if report.median_wake_seconds is None:
        print("wake decode             n/a (one new token: no decode step after the prompt)")
    else:
        print(
            f"wake decode             median {report.median_wake_seconds * ms:.2f} ms/token over "
            f"{len(report.wake_seconds)} step(s), consolidation excluded"
        )
    print(
        f"amortised consolidation {report.amortised_consolidation_seconds * ms:.2f} ms/token "
        f"({report.consolidation_seconds:.3f} s over {report.tokens_consumed} tokens consumed)"
    )
    return 0


def _ingest(args: argparse.Namespace) -> int:
    document = Path(args.file).expanduser()
    if not document.is_file():  # before loading anything
        raise ConvertError(f"--file {args.file!r} is not a file")
    try:
        text = document.read_text()
    except UnicodeDecodeError:
        raise ConvertError(f"--file {args.file!r} is not UTF-8 text") from None
    if not text.strip():
        raise ConvertError(f"--file {args.file!r} is empty")
    out = Path(args.out).expanduser()
    if out.exists() and not (out / "state.json").is_file():
        raise ConvertError(f"--out {args.out!r} exists and is not a saved state; choose another --out")
    if not writable_directory(nearest_existing(out.parent)):
        raise ConvertError(f"cannot write under {str(nearest_existing(out.parent))!r}; choose another --out")
    model, tokenizer = load_converted(
        args.dir, passes=args.passes, window=args.window, eviction=args.eviction
    )
    ids = tokenizer(text, return_tensors="pt").input_ids
    began = time.perf_counter()
    state = model.ingest(ids)
    seconds = time.perf_counter() - began
    state.save(out)
    print(
        f"read {state.tokens} tokens in {seconds:.2f} s ({state.tokens / max(seconds, 1e-9):,.0f} tokens/s): "
        f"{state.cache.stats['evictions']} chunk(s) of L={state.window} consolidated with N={state.passes}, "
        f"eviction {state.eviction}"
    )
    print(f"state: {out} ({state.cache.memory_bytes():,} bytes held; answer with `sleep-retrofit ask`)")
    return 0


def _ask(args: argparse.Namespace) -> int:
    if not all(p.strip() for p in args.prompt):  # before loading anything
        raise ConvertError("every --prompt must be a non-empty string")
    try:
        state = SleepState.load(args.state)
    except SleepStateError as error:
        raise ConvertError(str(error)) from None
    model, tokenizer = load_converted(args.dir)
    try:
        state.check_model(model)
    except SleepStateError as error:
        raise ConvertError(f"{error} (the state in {args.state} was not made from {args.dir})") from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(list(args.prompt), return_tensors="pt", padding=True, add_special_tokens=False)
    began = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            **batch,
            sleep_state=state,
            passes=args.passes,
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    seconds = time.perf_counter() - began
    for prompt, row in zip(args.prompt, out, strict=True):
        answer = tokenizer.decode(row[batch.input_ids.shape[1] :], skip_special_tokens=True)
        print(f"Q: {prompt}\nA: {answer}")
    print(
        f"--- {len(args.prompt)} question(s) from one state of {state.tokens} tokens in {seconds:.2f} s; "
        f"the document was not read again"
    )
    return 0


def _presets(args: argparse.Namespace) -> int:
    width = max(len(name) for name in PRESETS)
    for name, description in PRESETS.items():
        print(f"{name:<{width}}  {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="sleep-retrofit",
        description="Retrofit pretrained language models with sleep (N passes per evicted chunk).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    conv = sub.add_parser(
        "convert",
        help="convert a base model (directory, Hub id or preset) into a sleep-retrofit checkpoint",
        description="Convert a base model into a sleep-retrofit checkpoint directory that "
        "AutoModelForCausalLM loads. The new directory appears only once complete.",
    )
    conv.add_argument(
        "--model",
        required=True,
        metavar="PATH_OR_PRESET",
        help=f"model directory, Hub id (owner/name) or preset ({', '.join(PRESETS)})",
    )
    conv.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist)")
    conv.add_argument(
        "--fast-weights",
        choices=FAST_WEIGHT_KINDS,
        default=None,
        help="kind of inserted blocks (default: the family's: ouro jet, llama family gdn)",
    )
    where = conv.add_mutually_exclusive_group()
    where.add_argument(
        "--insert-at",
        type=_layer_list,
        default=None,
        metavar="I,J,...",
        help="insert a block after these base layers, e.g. 3,7,11 (default: the family's plan)",
    )
    where.add_argument(
        "--every",
        type=_positive_int,
        default=None,
        metavar="K",
        help="insert a block after every K-th layer (default: the family's plan)",
    )
    conv.add_argument("--with-mlp", action="store_true", help="give inserted blocks an MLP (default: off)")
    conv.add_argument(
        "--passes",
        type=_positive_int,
        default=1,
        metavar="N",
        help="consolidation passes per chunk, 1 = no sleep (default 1)",
    )
    conv.add_argument(
        "--window",
        type=_positive_int,
        default=None,
        metavar="L",
        help="chunk length and sliding attention window (default: min(2048, the model's "
        "max_position_embeddings))",
    )
    conv.add_argument(
        "--eviction",
        choices=EVICTION_MODES,
        default="hard",
        help="hard: drop the KV cache every L tokens; sliding: keep the last L-1 (default hard)",
    )
    conv.add_argument(
        "--loop-span",
        type=_non_negative_int,
        nargs=2,
        default=None,
        metavar=("START", "END"),
        help="base layers [START, END) the sleep passes repeat (default: ouro all, others the middle half)",
    )
    conv.add_argument(
        "--dtype",
        choices=tuple(DTYPES),
        default=None,
        help="weights dtype; auto keeps the checkpoint's (default float32; auto with --adapter-only)",
    )
    conv.add_argument("--overwrite", action="store_true", help="replace an existing --out (default: off)")
    conv.add_argument(
        "--adapter-only",
        action="store_true",
        help="write only the added blocks and the sleep config, with a reference to the base and the "
        "hash of its weights; loading resolves the base again (default: a full checkpoint)",
    )
    conv.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="passed to transformers when loading the source (default: off)",
    )
    conv.set_defaults(func=_convert)

    info = sub.add_parser("info", help="describe a converted checkpoint")
    info.add_argument("dir", metavar="DIR", help="a directory written by `sleep-retrofit convert`")
    info.add_argument("--json", action="store_true", help="print the description as JSON")
    info.set_defaults(func=_info)

    gen = sub.add_parser(
        "generate",
        help="generate from a converted checkpoint, with ingestion, consolidation and wake timings",
    )
    gen.add_argument("dir", metavar="DIR", help="a directory written by `sleep-retrofit convert`")
    gen.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt text")
    gen.add_argument(
        "--max-new-tokens",
        type=_new_tokens,
        default=32,
        metavar="K",
        help="tokens to generate (default 32)",
    )
    gen.add_argument(
        "--passes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="override the checkpoint's passes (default: the checkpoint's)",
    )
    gen.add_argument(
        "--window",
        type=_positive_int,
        default=None,
        metavar="L",
        help="override the checkpoint's window (default: the checkpoint's)",
    )
    gen.add_argument(
        "--eviction",
        choices=EVICTION_MODES,
        default=None,
        help="override the checkpoint's eviction (default: the checkpoint's)",
    )
    mode = gen.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="sample", action="store_false", help="greedy decoding (the default)")
    mode.add_argument(
        "--sample",
        dest="sample",
        action="store_true",
        help="sample from the full distribution at --temperature",
    )
    gen.set_defaults(sample=False)
    gen.add_argument(
        "--temperature",
        type=_temperature,
        default=1.0,
        metavar="T",
        help="sampling temperature, with --sample (default 1.0)",
    )
    gen.add_argument(
        "--seed", type=_seed, default=0, metavar="S", help="random seed for --sample (default 0)"
    )
    gen.add_argument(
        "--no-warmup",
        action="store_true",
        help="time from a cold start; by default one chunk and one decode step run untimed first",
    )
    gen.set_defaults(func=_generate)

    ingest = sub.add_parser(
        "ingest", help="read a document once with sleep and save its consolidated state (for `ask`)"
    )
    ingest.add_argument("dir", metavar="DIR", help="a directory written by `sleep-retrofit convert`")
    ingest.add_argument("--file", required=True, metavar="PATH", help="the document (UTF-8 text)")
    ingest.add_argument("--out", required=True, metavar="DIR", help="where to write the state")
    ingest.add_argument(
        "--passes", type=_positive_int, default=None, metavar="N", help="override the checkpoint's passes"
    )
    ingest.add_argument(
        "--window", type=_positive_int, default=None, metavar="L", help="override the checkpoint's window"
    )
    ingest.add_argument("--eviction", choices=EVICTION_MODES, default=None, help="override the eviction")
    ingest.set_defaults(func=_ingest)

    ask = sub.add_parser("ask", help="answer questions from a state saved by `ingest` (greedy decoding)")
    ask.add_argument("dir", metavar="DIR", help="the converted checkpoint that wrote the state")
    ask.add_argument("--state", required=True, metavar="DIR", help="a directory written by `ingest`")
    ask.add_argument(
        "--prompt", required=True, action="append", metavar="TEXT", help="a question (repeat for a batch)"
    )
    ask.add_argument(
        "--max-new-tokens", type=_new_tokens, default=32, metavar="K", help="tokens per answer (default 32)"
    )
    ask.add_argument(
        "--passes",
        type=_positive_int,
        default=None,
        metavar="N",
        help="passes for the chunks the questions complete (default: the state's)",
    )
    ask.set_defaults(func=_ask)

    evaluate = sub.add_parser("eval", help="evaluate a converted model across N and task difficulty")
    add_eval_arguments(evaluate)
    evaluate.set_defaults(func=run_eval)

    presets = sub.add_parser("presets", help="list the built-in tiny base models")
    presets.set_defaults(func=_presets)

    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (argument errors raise SystemExit(2))."""
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out).expanduser() if getattr(args, "out", None) is not None else None
    before = _identity(out)
    try:
        return args.func(args)
    except ConvertError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # convert publishes by one rename, so --out is either the old one or the new one, whole;
        # eval writes each finished cell to results.json, and a rerun resumes from them.
        if out is None or _identity(out) == before:
            outcome = "nothing was written"
        elif args.command in ("convert", "ingest"):
            outcome = f"{out} had already been written in full"
        else:
            outcome = f"the finished cells are in {out}; rerun the same command to resume"
        print(f"{parser.prog} {args.command}: interrupted; {outcome}", file=sys.stderr)
        return 130


def _identity(path: Path | None) -> tuple[int, int] | None:
    """What tells a directory replaced or written since: its inode and modification time."""
    if path is None or not path.exists():
        return None
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


if __name__ == "__main__":
    sys.exit(main())
