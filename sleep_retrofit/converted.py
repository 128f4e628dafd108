"""A converted checkpoint directory: check it before loading anything, describe it, load it.

``check_checkpoint`` reads config.json (a sleep-retrofit config whose settings and base are
valid), checks the weight files against it from their headers and sizes, and parses the
tokenizer: a damaged directory fails here in one line (ConvertError), not deep inside
transformers. ``describe`` is ``sleep-retrofit info``; ``load_converted`` loads model and tokenizer
for ``sleep-retrofit generate`` with sleep settings overridden.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig
from transformers.utils import logging as hf_logging

from .adapters import ADAPTER_WEIGHTS, ADDED_PREFIX
from .checks import is_int
from .errors import ConvertError, first_line
from .modeling import SleepRetrofitConfig, SleepRetrofitForCausalLM
from .models.registry import UnsupportedModelError, resolve_family
from .retrofit import parameter_report
from .sleep import SleepSettings, family_adapter

__all__ = [
    "TOKENIZER_FILES",
    "UnreadableWeightsError",
    "check_checkpoint",
    "check_weights",
    "check_window_limit",
    "describe",
    "has_tokenizer_files",
    "is_converted_checkpoint",
    "load_converted",
    "quiet_transformers",
    "read_converted_config",
    "read_safetensors_header",
]

# Files whose presence says a local directory ships a tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)


@contextlib.contextmanager
def quiet_transformers(keep_bars: bool = False) -> Iterator[None]:
    """Silence transformers' info/warning logs and, unless `keep_bars`, its own progress bars
    ("Loading weights", "Writing model shards") for the duration; ours report the stages instead.
    Hub downloads and large local checkpoints keep their bars (`keep_bars`): minutes of loading
    or a multi-GB download must not look like a hang."""
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not keep_bars:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def is_converted_checkpoint(directory: Path) -> bool:
    """A directory that convert (or save_pretrained of a converted model) wrote."""
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("model_type") == SleepRetrofitConfig.model_type


def check_window_limit(window: int, config: PreTrainedConfig, what: str) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if is_int(limit) and window > limit:
        raise ConvertError(
            f"window (L) {window} is larger than the position limit of {what} "
            f"(max_position_embeddings {limit}); choose a window in 1..{limit}"
        )


def read_converted_config(directory: str | os.PathLike) -> tuple[Path, SleepRetrofitConfig]:
    """The directory and its SleepRetrofitConfig, or a ConvertError saying what is wrong with it
    (not a directory, no or unreadable config.json, another model type, invalid sleep settings or
    an unsupported base, as a hand-edited config may have)."""
    path = Path(directory).expanduser()
    shown = os.fspath(directory)
    if not path.is_dir():
        raise ConvertError(f"{shown!r} is not a directory; give a converted checkpoint directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConvertError(f"{shown!r} has no config.json; give a converted checkpoint directory")
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise ConvertError(f"cannot read {str(config_file)!r}: {first_line(error)}") from error
    if not isinstance(raw, dict):
        raise ConvertError(
            f"{str(config_file)!r} holds a JSON {type(raw).__name__}, not a config (a JSON object)"
        )
    model_type = raw.get("model_type")
    if model_type != SleepRetrofitConfig.model_type:
        raise ConvertError(
            f"{shown!r} is not a sleep-retrofit checkpoint (model_type {model_type!r}); "
            f"convert it first with `sleep-retrofit convert --model {shown} --out DIR`"
        )
    try:
        with quiet_transformers():
            config = SleepRetrofitConfig.from_pretrained(path)
        resolve_family(config.base_config)
        config.plan()
    except (ValueError, TypeError, KeyError, UnsupportedModelError) as error:
        raise ConvertError(
            f"{str(config_file)!r} is not a valid sleep-retrofit config: {first_line(error)}; "
            "convert the base model again (or undo the edit)"
        ) from None
    return path, config


def _check_tokenizer_files(directory: Path) -> None:
    """A tokenizer.json that is not JSON would fail deep inside `tokenizers`; say so here."""
    file = directory / "tokenizer.json"
    if file.is_file():
        try:
            json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ConvertError(
                f"{str(file)!r} is not readable ({first_line(error)}); copy the checkpoint's tokenizer again"
            ) from None


def _checked(directory: str | os.PathLike) -> tuple[Path, SleepRetrofitConfig, nn.Module, dict[str, Any]]:
    """(path, config, a meta-device model of it, the weight-file summary) once the config, the
    weight files (headers and sizes against the model) and the tokenizer files have passed."""
    path, config = read_converted_config(directory)
    with torch.device("meta"), quiet_transformers():
        model = SleepRetrofitForCausalLM(config)
    weights = check_weights(path, model)
    _check_tokenizer_files(path)
    return path, config, model, weights


def check_checkpoint(directory: str | os.PathLike) -> tuple[Path, SleepRetrofitConfig]:
    """Everything a load needs, checked cheaply before loading anything: the config
    (:func:`read_converted_config`), the weight files against it (:func:`check_weights`) and the
    tokenizer files. Returns ``(path, config)``; raises ConvertError naming the first problem."""
    path, config, _, _ = _checked(directory)
    return path, config


def describe(directory: str | os.PathLike) -> dict[str, Any]:
    """What a converted checkpoint is, for ``sleep-retrofit info`` (JSON-serialisable).

    Parameters are counted on a meta-device model built from the config (nothing loaded); the
    weight files are checked against it from their headers and sizes (:func:`check_weights`).

    Returns:
        ``{"path", "architecture", "model_type", "family", "num_layers", "hidden_size",
        "max_position_embeddings", "dtype", "base_parameters", "added_parameters", "percent_added",
        "parameter_summary", "fast_weights": {"kind", "insert_after", "with_mlp", "num_blocks",
        "mixer_kwargs", "native_layers"}, "sleep": {"passes", "window", "eviction", "loop_span",
        "loop_span_is_default"}, "tokenizer": bool, "weights": {"files", "bytes", "tensors"}}``.
        ``native_layers`` lists the base model's own fast-weight layers (Jet-Nemotron's
        JetBlocks), ``loop_span`` is [start, end) resolved.

    Raises:
        ConvertError: when the directory is missing or not a converted checkpoint, or its
            weights are missing, truncated or do not fit its config.
    """
    path, config, model, weights = _checked(directory)
    base_config = config.base_config
    adapter = family_adapter(base_config)
    report = parameter_report(model.base, model.fast_weights)
    plan = config.plan()
    num_layers = base_config.num_hidden_layers
    native_layers = adapter.native_fast_weight_layers(base_config)
    span = config.loop_span
    dtype = getattr(config, "dtype", None) or getattr(base_config, "dtype", None)
    return {
        "path": str(path.resolve()),
        "architecture": (getattr(base_config, "architectures", None) or [type(model.base).__name__])[0],
        "model_type": base_config.model_type,
        "family": adapter.name,
        "num_layers": num_layers,
        "hidden_size": base_config.hidden_size,
        "max_position_embeddings": getattr(base_config, "max_position_embeddings", None),
        "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "base_parameters": report["base_parameters"],
        "added_parameters": report["added_parameters"],
        "percent_added": report["percent_added"],
        "parameter_summary": report["summary"],
        "fast_weights": {
            "kind": plan.kind,
            "insert_after": list(plan.insert_after),
            "with_mlp": plan.with_mlp,
            "num_blocks": plan.num_blocks,
            "mixer_kwargs": dict(plan.mixer_kwargs),
            "native_layers": native_layers,
        },
        "sleep": {
            "passes": config.passes,
            "window": config.window,
            "eviction": config.eviction,
            "loop_span": list(span if span is not None else adapter.default_loop_span(num_layers)),
            "loop_span_is_default": span is None,
        },
        "tokenizer": has_tokenizer_files(path),
        "base_reference": getattr(config, "base_reference", None),
        "weights": weights,
    }


class UnreadableWeightsError(ValueError):
    """A safetensors file that is cut short or is not safetensors at all."""


def read_safetensors_header(file: Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors file's header, after checking that the file holds
    every byte the header promises (a truncated copy fails here, without reading the data).

    Raises:
        UnreadableWeightsError: naming the file and what is wrong with it.
    """
    size = file.stat().st_size
    with file.open("rb") as handle:
        length = int.from_bytes(handle.read(8), "little")
        if size >= 8 and length > size - 8 and length < 100 * 2**20:  # a plausible header, cut off
            raise UnreadableWeightsError(
                f"{str(file)!r} is truncated: {size:,} bytes, shorter than its own header"
            )
        raw = handle.read(length) if size >= 8 and length <= size - 8 else b""
    try:
        header = json.loads(raw)
        if not isinstance(header, dict):
            raise ValueError("its header is not a table of tensors")
        header.pop("__metadata__", None)
        end = max((int(entry["data_offsets"][1]) for entry in header.values()), default=0)
        shapes = {name: [int(n) for n in entry["shape"]] for name, entry in header.items()}
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise UnreadableWeightsError(f"{str(file)!r} is not a readable safetensors file ({error})") from None
    if 8 + length + end > size:
        raise UnreadableWeightsError(f"{str(file)!r} is truncated: {size:,} of {8 + length + end:,} bytes")
    return shapes


def check_weights(directory: Path, model: nn.Module) -> dict[str, Any]:
    """Check, cheaply (headers and sizes, no tensor read), that a checkpoint's safetensors files
    are complete and hold every tensor of `model` (a meta-device model of its config) with its
    shape. Returns {"files", "bytes", "tensors"}; raises ConvertError naming what is wrong."""
    index = directory / "model.safetensors.index.json"
    adapter = (directory / ADAPTER_WEIGHTS).is_file()
    if adapter:  # only the added tensors are stored; the base comes from its reference
        names = [ADAPTER_WEIGHTS]
    elif index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ConvertError(f"cannot read {str(index)!r} ({first_line(error)}); convert again") from None
    else:
        names = ["model.safetensors"]
    files = [directory / name for name in names]
    absent = [f.name for f in files if not f.is_file()]
    if absent:
        raise ConvertError(
            f"{str(directory)!r} lacks its weights ({', '.join(absent)}); copy the whole checkpoint "
            "directory, or convert again"
        )
    stored: dict[str, list[int]] = {}
    for file in files:
        try:
            stored.update(read_safetensors_header(file))
        except UnreadableWeightsError as error:
            raise ConvertError(f"{error}; copy or convert it again") from None
    expected = model.state_dict(keep_vars=True)  # the tensors themselves: tied ones share an id
    if adapter:
        expected = {name: t for name, t in expected.items() if name.startswith(ADDED_PREFIX)}
    # Tied tensors (an output head sharing the embedding) are stored once, under any of their names.
    groups: dict[int, list[str]] = {}
    for name, tensor in expected.items():
        groups.setdefault(id(tensor), []).append(name)
    missing = [names_[0] for names_ in groups.values() if not any(n in stored for n in names_)]
    wrong = [
        f"{name} {stored[name]} (the config needs {list(tensor.shape)})"
        for name, tensor in expected.items()
        if name in stored and stored[name] != list(tensor.shape)
    ]
    if missing or wrong:
        problem = (
            f"missing {len(missing)} tensor(s), e.g. {missing[0]}" if missing else f"wrong shape: {wrong[0]}"
        )
        raise ConvertError(f"{str(directory)!r} does not match its config.json: {problem}; convert again")
    return {"files": names, "bytes": sum(f.stat().st_size for f in files), "tensors": len(stored)}


def load_converted(
    directory: str | os.PathLike,
    *,
    passes: int | None = None,
    window: int | None = None,
    eviction: str | None = None,
):
    """Load a converted checkpoint and its tokenizer, with sleep settings overridden (None = keep).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.

    Raises:
        ConvertError: for a directory that is not a converted checkpoint or has no tokenizer, or a
            bad override (listing the valid values).
    """
    path, config = check_checkpoint(directory)
    try:  # the overrides checked as the model will check them, with the checkpoint's as defaults
        SleepSettings(
            passes=config.passes if passes is None else passes,
            window=config.window if window is None else window,
            eviction=config.eviction if eviction is None else eviction,
        )
    except ValueError as error:
        raise ConvertError(str(error)) from None
    if window is not None:
        check_window_limit(window, config.base_config, "the base model")
    if not has_tokenizer_files(path):
        raise ConvertError(f"{os.fspath(directory)!r} has no tokenizer files; it cannot generate from text")
    overrides = {
        k: v for k, v in dict(passes=passes, window=window, eviction=eviction).items() if v is not None
    }
    from safetensors import SafetensorError

    try:
        with quiet_transformers():
            model = AutoModelForCausalLM.from_pretrained(path, **overrides).eval()
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, SafetensorError) as error:  # what the cheap checks cannot see
        raise ConvertError(f"cannot load {os.fspath(directory)!r}: {first_line(error)}") from error
    return model, tokenizer
