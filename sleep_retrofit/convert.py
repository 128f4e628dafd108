"""Convert a pretrained checkpoint (or a built-in preset) into a sleep-retrofit checkpoint.

``convert`` is what ``sleep-retrofit convert`` runs::

    check every argument against the source's config.json     (nothing heavy loaded yet)
    load tokenizer -> load base model -> insert fast-weight blocks (identity at insertion)
    save model + tokenizer into  OUT_PARENT/.OUT.partial-XXXX/
    rename it to OUT                                          (the old OUT is replaced only now)

A bad request raises :class:`ConvertError` (a ``ValueError``) with one line that names the problem
and the valid choices, before anything is written. A conversion that fails or is interrupted
midway (Ctrl-C included) removes its temporary directory, so OUT is either absent, the complete
new checkpoint, or, with ``overwrite``, the untouched old one.

Reading, checking and loading a converted directory is converted.py; timed generation is
generation.py.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedConfig

from .adapters import save_adapter_checkpoint
from .checks import is_int, nearest_existing, writable_directory
from .converted import (
    UnreadableWeightsError,
    check_window_limit,
    has_tokenizer_files,
    is_converted_checkpoint,
    quiet_transformers,
    read_safetensors_header,
)
from .errors import ConvertError, first_line
from .modeling import SleepRetrofitConfig, SleepRetrofitForCausalLM
from .models.registry import ModelFamily, UnsupportedModelError, resolve_family, supported_model_types
from .presets import PRESETS, is_preset, load_preset, preset_config, preset_tokenizer
from .publish import recover_leftovers, replace_directory, staging_directory
from .retrofit import FAST_WEIGHT_KINDS, FastWeightPlan, blocks_outside_loop, default_plan, plan_from_every
from .sleep import SleepSettings, family_adapter

__all__ = ["DTYPES", "ConvertError", "ModelSource", "convert", "default_window", "resolve_source"]

# CLI name -> torch dtype; "auto" keeps the checkpoint's own dtype (float32 for presets).
DTYPES: dict[str, torch.dtype | None] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "auto": None,
}

# "owner/name" as the Hub spells repository ids.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+$")


# --------------------------------------------------------------------------------------------- helpers


def _stage_bar(total: int, desc: str, progress: bool) -> tqdm:
    # disable=None: shown on a terminal only, so logs and captured output stay clean.
    return tqdm(total=total, desc=desc, unit="step", disable=None if progress else True, leave=False)


# --------------------------------------------------------------------------------------------- sources


# Local weights from this size on keep transformers' per-shard load/save bars during conversion.
LARGE_CHECKPOINT_BYTES = 1 << 30


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from, with its config (read without loading any weights).

    Attributes:
        kind: ``"preset"``, ``"local"`` (a directory) or ``"hub"`` (a Hugging Face Hub id).
        name: the preset name, the resolved directory, or the Hub id.
        config: the base model's config.
        family: its :class:`~sleep_retrofit.models.registry.ModelFamily`.
    """

    kind: str
    name: str
    config: PreTrainedConfig
    family: ModelFamily

    @property
    def path(self) -> Path | None:
        return Path(self.name) if self.kind == "local" else None

    def shows_loading_bars(self) -> bool:
        """Whether transformers' own load/save bars should stay on: a Hub download, or local
        weights large enough (LARGE_CHECKPOINT_BYTES) that loading them takes a while."""
        if self.kind == "hub":
            return True
        if self.path is None:
            return False
        weights = [*self.path.glob("*.safetensors"), *self.path.glob("*.bin")]
        return sum(f.stat().st_size for f in weights if f.is_file()) >= LARGE_CHECKPOINT_BYTES


def _source_choices() -> str:
    return (
        f"give an existing model directory, a preset ({', '.join(PRESETS)}) "
        f"or a Hugging Face Hub id (owner/name)"
    )


def resolve_source(model: str | os.PathLike, *, trust_remote_code: bool = False) -> ModelSource:
    """Identify ``model`` (preset name, local directory or Hub id) and read its config.

    Only config.json is read (fetched, for a Hub id); no weights.

    Raises:
        ConvertError: for a missing path, an unknown preset, a directory that is not a model, a
            config that cannot be fetched, or an unsupported architecture (listing the supported).
    """
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ConvertError(f"model must be a path, preset name or Hub id; {_source_choices()}")
    text = os.fspath(model)
    if is_preset(text):
        config = preset_config(text)
        return ModelSource("preset", text, config, resolve_family(config))

    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConvertError(f"model {text!r} is a file, not a model directory; {_source_choices()}")
        if not (path / "config.json").is_file():
            raise ConvertError(f"model directory {text!r} has no config.json; {_source_choices()}")
        kind, location = "local", str(path.resolve())
    elif _HUB_ID.match(text) and not Path(text.split("/")[0]).exists():
        # "owner/name" whose first part is no local directory: a Hub id, not a mistyped path.
        kind, location = "hub", text
    elif "/" in text or os.sep in text or text.startswith((".", "~")):
        raise ConvertError(f"model path {text!r} does not exist; {_source_choices()}")
    else:
        raise ConvertError(
            f"unknown preset {text!r} (and no such path); valid presets: {', '.join(PRESETS)}; "
            f"or give an existing model directory or a Hub id (owner/name)"
        )

    try:
        with quiet_transformers():
            raw, _ = PreTrainedConfig.get_config_dict(location)
    except (OSError, ValueError) as error:
        where = "read the config of" if kind == "local" else "fetch the Hub config of"
        raise ConvertError(
            f"could not {where} {text!r} ({first_line(error)}); {_source_choices()}"
        ) from error
    if not isinstance(raw, dict):
        raise ConvertError(f"the config.json of {text!r} holds a JSON {type(raw).__name__}, not a config")
    model_type = raw.get("model_type")
    if model_type == SleepRetrofitConfig.model_type:
        raise ConvertError(
            f"{text!r} is already a sleep-retrofit checkpoint; generate from it, or override passes/"
            f"window/eviction at load time, instead of converting it again"
        )
    try:
        family = resolve_family(raw)
    except UnsupportedModelError:
        raise ConvertError(
            f"unsupported architecture: {text!r} has model_type {model_type!r}; supported model_types: "
            f"{', '.join(supported_model_types())}"
        ) from None
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise ConvertError(f"could not read the config of {text!r}: {first_line(error)}") from error
    return ModelSource(kind, location, config, family)


# --------------------------------------------------------------------------------------------- checks


def _check_settings(passes: Any, window: Any, eviction: Any, fast_weights: Any, dtype: Any) -> None:
    """The checks that need no config (the sleep settings as SleepSettings checks them)."""
    try:
        SleepSettings(passes=passes, window=window, eviction=eviction)
    except ValueError as error:
        raise ConvertError(str(error)) from None
    if fast_weights is not None and fast_weights not in FAST_WEIGHT_KINDS:
        raise ConvertError(
            f"fast_weights must be one of {', '.join(FAST_WEIGHT_KINDS)} (or None for the family "
            f"default), got {fast_weights!r}"
        )
    if dtype not in DTYPES:
        raise ConvertError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


DEFAULT_WINDOW = 2048


def default_window(config: PreTrainedConfig) -> int:
    """The window conversion picks when none is given: 2048 (the paper's scale), or the base
    model's max_position_embeddings when that is smaller (a chunk must fit its positions)."""
    limit = getattr(config, "max_position_embeddings", None)
    return min(DEFAULT_WINDOW, limit) if is_int(limit) and limit >= 1 else DEFAULT_WINDOW


def _build_plan(
    source: ModelSource,
    fast_weights: str | None,
    insert_at: list[int] | None,
    every: int | None,
    with_mlp: bool,
    loop_span: tuple[int, int] | None = None,
) -> FastWeightPlan:
    """The fast-weight plan for the request, checked against the base model's layers and the
    loop span (a plan whose blocks all lie outside it would never be slept into)."""
    plan = _requested_plan(source, fast_weights, insert_at, every, with_mlp, loop_span)
    span = loop_span or family_adapter(source.family.name).default_loop_span(source.config.num_hidden_layers)
    if blocks_outside_loop(plan, span):
        raise ConvertError(
            f"no inserted block lies inside the loop span {list(span)} (layers {span[0]}..{span[1] - 1}; a "
            f"block after layer i is inside when {span[0]} <= i < {span[1]}), but blocks would follow "
            f"layers {plan.insert_after}: sleep's passes would never reach a fast-weight block. Insert "
            f"after a layer in {span[0]}..{span[1] - 1}, or widen loop_span"
        )
    return plan


def _requested_plan(
    source: ModelSource,
    fast_weights: str | None,
    insert_at: list[int] | None,
    every: int | None,
    with_mlp: bool,
    loop_span: tuple[int, int] | None,
) -> FastWeightPlan:
    config = source.config
    num_layers = config.num_hidden_layers
    if insert_at is not None and every is not None:
        raise ConvertError("give insert_at or every, not both")
    family_default = default_plan(config)
    kind = fast_weights or family_default.kind

    if insert_at is not None:
        if not insert_at:
            raise ConvertError("insert_at is empty; give at least one layer index")
        try:  # the plan's own checks (types, repeats, range), in the user's words
            plan = FastWeightPlan(kind, insert_at, with_mlp)
            plan.validate(num_layers)
        except ValueError as error:
            message = str(error).replace("insert_after", "insert_at")
            raise ConvertError(f"{message} ({source.name!r} has {num_layers} layers)") from None
        return plan.resolve(config.hidden_size)
    if every is not None:
        if not is_int(every) or not 1 <= every <= num_layers:
            raise ConvertError(
                f"every must be an integer in 1..{num_layers} ({source.name!r} has {num_layers} layers), "
                f"got {every!r}"
            )
        return plan_from_every(num_layers, every, kind=kind, with_mlp=with_mlp).resolve(config.hidden_size)

    if not isinstance(with_mlp, bool):
        raise ConvertError(f"with_mlp must be True or False, got {with_mlp!r}")
    plan = default_plan(config, kind=fast_weights, with_mlp=with_mlp, loop_span=loop_span)
    if not plan.insert_after and (fast_weights is not None or with_mlp):
        # Jet-Nemotron's default inserts nothing: a kind or an MLP would silently be ignored.
        raise ConvertError(
            f"the {source.family.name} default inserts no blocks, so fast_weights/with_mlp have no effect; "
            f"give insert_at or every (layers 0..{num_layers - 1}) to insert blocks"
        )
    return plan


def _check_loop_span(loop_span: Any, source: ModelSource) -> tuple[int, int] | None:
    if loop_span is None:
        return None
    num_layers = source.config.num_hidden_layers
    span = tuple(loop_span) if hasattr(loop_span, "__iter__") and not isinstance(loop_span, str) else ()
    if len(span) != 2 or not all(is_int(i) for i in span) or not 0 <= span[0] < span[1] <= num_layers:
        raise ConvertError(
            f"loop_span must be START END with 0 <= START < END <= {num_layers} (END exclusive; "
            f"{source.name!r} has {num_layers} layers), got {loop_span!r}"
        )
    try:
        family_adapter(source.family.name).check_loop_span(span, num_layers)
    except ValueError as error:
        raise ConvertError(f"{error} (or leave loop_span out)") from None
    return span


def _check_replaceable(path: Path, given: str) -> None:
    """overwrite replaces only what convert wrote: an empty directory or a sleep-retrofit
    checkpoint, never the working directory or one of its parents (`--out .`), never a
    directory of other files (it would be deleted whole)."""
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        what = "the working directory" if path == cwd else "a parent of the working directory"
        raise ConvertError(
            f"--overwrite would delete {given!r}, {what}; nothing was deleted. Give --out a new "
            "directory or an earlier checkpoint, e.g. --out converted"
        )
    entries = sorted(entry.name for entry in path.iterdir())
    if entries and not is_converted_checkpoint(path):
        shown = ", ".join(repr(name) for name in entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise ConvertError(
            f"--overwrite replaces only a sleep-retrofit checkpoint, and {given!r} is not one (it holds "
            f"{len(entries)} entries: {shown}); nothing was deleted. Choose another --out"
        )


def _check_out(out: Any, overwrite: bool, source: ModelSource) -> Path:
    if not isinstance(out, (str, os.PathLike)) or not os.fspath(out).strip():
        raise ConvertError(f"out must be a directory path, got {out!r}")
    path = Path(out).expanduser().resolve()
    for line in recover_leftovers(path, is_converted_checkpoint):
        warnings.warn(f"convert: {line}", stacklevel=3)
    if source.path is not None and (path == source.path or path in source.path.parents):
        raise ConvertError(
            f"output {os.fspath(out)!r} would replace the source model {source.name!r}; choose another --out"
        )
    if path.exists():
        if not path.is_dir():
            raise ConvertError(
                f"output {os.fspath(out)!r} exists and is not a directory; choose another --out"
            )
        if not overwrite:
            raise ConvertError(
                f"output directory {os.fspath(out)!r} already exists; pass overwrite (--overwrite) to "
                f"replace it, or choose another --out"
            )
        _check_replaceable(path, os.fspath(out))
    ancestor = nearest_existing(path.parent)
    if not writable_directory(ancestor):
        raise ConvertError(f"cannot write under {str(ancestor)!r}; choose another --out")
    return path


# --------------------------------------------------------------------------------------------- loading


def _load_tokenizer(source: ModelSource, trust_remote_code: bool):
    """The source's tokenizer, or None when it ships none."""
    if source.kind == "preset":
        return preset_tokenizer()
    if source.kind == "local" and not has_tokenizer_files(Path(source.name)):
        return None
    try:
        return AutoTokenizer.from_pretrained(source.name, trust_remote_code=trust_remote_code)
    except OSError as error:
        if source.kind == "hub":  # a Hub repository without tokenizer files
            return None
        raise ConvertError(f"could not load the tokenizer of {source.name!r}: {first_line(error)}") from error
    except ValueError as error:
        raise ConvertError(f"could not load the tokenizer of {source.name!r}: {first_line(error)}") from error


def _load_base(source: ModelSource, dtype: str, trust_remote_code: bool):
    torch_dtype = DTYPES[dtype]
    if source.kind == "preset":
        model, _ = load_preset(source.name, dtype=torch_dtype or torch.float32)
        return model
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.name, dtype=torch_dtype or "auto", trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, SafetensorError) as error:
        raise ConvertError(f"could not load the base model {source.name!r}: {first_line(error)}") from error
    except pickle.UnpicklingError as error:  # never retried with weights_only=False: that runs its code
        raise ConvertError(
            f"could not load the base model {source.name!r}: its pickle weights (.bin) are corrupt or hold "
            "more than tensors; save them as safetensors where the model was made"
        ) from error
    except RuntimeError as error:  # transformers' shape-mismatch report names no tensor in its message
        mismatch = _first_shape_mismatch(source)
        if mismatch is None:
            raise
        raise ConvertError(
            f"the weights of {source.name!r} do not fit its config.json: {mismatch}"
        ) from error
    _check_base_weights(model, source.name)
    return model.eval()


def _first_shape_mismatch(source: ModelSource) -> str | None:
    """'NAME has shape [a, b] in the checkpoint, the config needs [c, d]' for the first tensor of a
    local safetensors checkpoint whose shape differs from a model built from its config."""
    if source.path is None:
        return None
    with torch.device("meta"), quiet_transformers():
        expected = {
            name: list(t.shape)
            for name, t in AutoModelForCausalLM.from_config(source.config).state_dict().items()
        }
    for file in sorted(source.path.glob("*.safetensors")):
        try:
            stored = read_safetensors_header(file)
        except UnreadableWeightsError:
            continue
        for name, shape in stored.items():
            if name in expected and expected[name] != shape:
                return f"{name} has shape {shape} in {file.name}, the config needs {expected[name]}"
    return None


def _check_base_weights(model: nn.Module, name: str) -> None:
    """A base whose weights are not floating point (int32 tensors where the model has floats) or
    hold NaN/inf would convert silently and generate garbage: refuse, naming the first tensor."""
    for tensor_name, parameter in model.named_parameters():
        if not parameter.is_floating_point():
            raise ConvertError(
                f"the base model {name!r} has {parameter.dtype} weights ({tensor_name}); a checkpoint's "
                "weights must be floating point"
            )
        if not bool(torch.isfinite(parameter).all()):
            raise ConvertError(
                f"the base model {name!r} has NaN or infinite values in {tensor_name}; its checkpoint is "
                "damaged (or was saved from a diverged run)"
            )


def _make_parents(path: Path) -> list[Path]:
    """Create the missing ancestors of `path`; return those created, deepest first."""
    created = []
    ancestor = path.parent
    while not ancestor.exists():
        created.append(ancestor)
        ancestor = ancestor.parent
    for directory in reversed(created):
        directory.mkdir()
    return created


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:  # deepest first
        with contextlib.suppress(OSError):
            directory.rmdir()


# --------------------------------------------------------------------------------------------- convert


def convert(
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fast_weights: str | None = None,
    insert_at: list[int] | None = None,
    every: int | None = None,
    with_mlp: bool = False,
    passes: int = 1,
    window: int | None = None,
    eviction: str = "hard",
    loop_span: tuple[int, int] | list[int] | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    progress: bool = True,
    adapter_only: bool = False,
) -> Path:
    """Convert a base model into a sleep-retrofit checkpoint directory.

    Args:
        model: a local model directory, a Hub id (``owner/name``) or a preset name (``PRESETS``).
        out: the directory to write; it must not exist unless ``overwrite``.
        adapter_only: write only what the retrofit adds (the fast-weight blocks, in the base's
            dtype, and the sleep config) with a reference to the base and the hash of its weights
            (sleep_retrofit.adapters); loading resolves the base again.
        fast_weights: kind of inserted blocks, ``"jet"``, ``"gdn"`` or ``"mamba2"``; None = the
            family default (Ouro: jet, Llama family: gdn; Jet-Nemotron inserts nothing by default).
        insert_at: base layer indices after which a block is inserted (overrides the family default).
        every: insert a block after every ``every``-th layer instead (exclusive with ``insert_at``).
        with_mlp: give every inserted block an MLP of the base model's intermediate size.
        passes: N, consolidation passes per chunk (1 = no sleep).
        window: L, chunk length (and attention window with sliding eviction); at most the base
            model's ``max_position_embeddings``. None = ``default_window(config)``:
            min(2048, max_position_embeddings).
        eviction: ``"hard"`` or ``"sliding"``.
        loop_span: (start, end) base layers the sleep passes repeat, end exclusive; None = the
            family default (Ouro: all, others: the middle half).
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"`` or ``"auto"`` (the checkpoint's own); None:
            float32, or auto for an adapter-only checkpoint.
        overwrite: replace an existing ``out`` (only once the new checkpoint is complete).
        trust_remote_code: passed to transformers when loading the config, tokenizer and model.
        progress: show a progress bar of the stages on stderr (when it is a terminal).

    Returns:
        The absolute path of the written directory (model, config, shim module, tokenizer files).

    Raises:
        ConvertError: for any bad argument, before anything is loaded or written.
    """
    if dtype is None:  # an adapter keeps the base's dtype; a full checkpoint is float32 by default
        dtype = "auto" if adapter_only else "float32"
    if adapter_only and dtype != "auto":
        raise ConvertError(
            f"an adapter-only checkpoint keeps the base model's own dtype (it is checked against the base's "
            f"stored weights), so dtype must be auto, got {dtype!r}"
        )
    _check_settings(passes, DEFAULT_WINDOW if window is None else window, eviction, fast_weights, dtype)
    if not isinstance(overwrite, bool):
        raise ConvertError(f"overwrite must be True or False, got {overwrite!r}")
    source = resolve_source(model, trust_remote_code=trust_remote_code)
    window = default_window(source.config) if window is None else window
    check_window_limit(window, source.config, repr(source.name))
    span = _check_loop_span(loop_span, source)
    plan = _build_plan(source, fast_weights, insert_at, every, with_mlp, span)
    settings = SleepSettings(passes=passes, window=window, eviction=eviction, loop_span=span)
    out_path = _check_out(out, overwrite, source)

    with (
        _stage_bar(5, f"convert {source.name}", progress) as bar,
        quiet_transformers(keep_bars=progress and source.shows_loading_bars()),
    ):
        bar.set_postfix_str("tokenizer")
        tokenizer = _load_tokenizer(source, trust_remote_code)
        bar.update()
        bar.set_postfix_str("base model")
        base = _load_base(source, dtype, trust_remote_code)
        bar.update()
        bar.set_postfix_str("fast weights")
        converted = SleepRetrofitForCausalLM.from_base(base, plan=plan, settings=settings).eval()
        bar.update()

        bar.set_postfix_str("save")
        created = _make_parents(out_path)
        staging = None
        try:
            staging = staging_directory(out_path)
            if adapter_only:
                save_adapter_checkpoint(converted, staging, source.name)  # preset, absolute path or Hub id
            else:
                converted.save_pretrained(staging)
            if tokenizer is not None:
                tokenizer.save_pretrained(staging)
            bar.update()
            bar.set_postfix_str("finish")
            if out_path.exists() and not overwrite:  # it appeared while we were converting
                raise ConvertError(
                    f"output directory {str(out_path)!r} appeared during the conversion; nothing was replaced"
                )
            replace_directory(staging, out_path)
            bar.update()
        except BaseException:  # KeyboardInterrupt too: never leave a partial checkpoint behind
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(created)
            raise
    return out_path
