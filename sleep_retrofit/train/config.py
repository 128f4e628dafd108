"""The training configuration: a dataclass schema, loaded from YAML, with dotted overrides.

    config = load_config("recipes/configs/rule110_tiny.yaml", ["stage1.max_steps=20", "seed=3"])

Every section is a dataclass whose fields are the keys a YAML file may use (docs/training.md
lists them with their defaults). Unknown keys are an error that names them and suggests the
closest valid key; values are checked (N >= 1, L >= 1, stage names, ...) before anything is
built, so a bad config fails before the first training step.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checks import is_int, nearest_existing, writable_directory
from ..modeling import DEFAULT_LORA_TARGETS

__all__ = [
    "ConfigError",
    "DataConfig",
    "LoraConfig",
    "ModelConfig",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
]

STAGES = ("stage1", "stage2")
FINETUNE_MODES = ("fast_weights", "full", "lora")
OPTIMIZERS = ("muon", "adamw")
MIXED_PRECISION = ("no", "bf16")
TASK_NAMES = ("rule110", "depo", "gsm_infinite", "text")
OBJECTIVES = ("ce", "distill")


class ConfigError(ValueError):
    """A bad training configuration (unknown key, value out of range, missing path)."""


@dataclass
class ModelConfig:
    """What to train.

    source: "toy" (the paper's from-scratch attn/GDN hybrid), a preset name ("tiny-ouro", ...),
        a converted checkpoint directory (model_type sleep_retrofit), or a base model directory
        / Hub id that is converted on the fly with `fast_weights`.
    passes / window / eviction: N, L and the default eviction (each stage may override N and
        the eviction).
    """

    source: str = "toy"
    passes: int = 1
    window: int = 24
    eviction: str = "hard"
    fast_weights: str | None = None
    # toy hybrid only (sleep_retrofit.toy.build_toy_hybrid; None = its default)
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int | None = None
    gdn_heads: int | None = None
    gdn_head_dim: int | None = None
    initializer_range: float = 0.02
    dtype: str = "float32"
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    """The training task. `options` are fields of the task's config (Rule110Config, DepoConfig,
    GSMInfiniteConfig); `path` reads GSM-Infinite Hub files instead of generating problems.
    `mixture`: a list of option overrides (e.g. `[{steps: 0}, {steps: 1}, {steps: 2}]`); the
    examples are split evenly over them and shuffled (a uniform mixture of difficulties)."""

    task: str = "rule110"
    train_examples: int = 10_000
    eval_examples: int = 256
    options: dict[str, Any] = field(default_factory=dict)
    mixture: list[dict[str, Any]] = field(default_factory=list)
    path: str | None = None
    seed: int = 0


@dataclass
class LoraConfig:
    """PEFT LoRA for stage 2 (`finetune: lora`): the base model's attention / MLP projections get
    adapters, the fast-weight blocks are trained fully (modules_to_save)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_LORA_TARGETS))


@dataclass
class StageConfig:
    """One training stage. Stage 1 always trains the fast weights only, with hard eviction."""

    epochs: float = 1.0
    max_steps: int | None = None
    passes: int | None = None
    eviction: str | None = None
    finetune: str = "full"
    optimizer: str = "muon"
    muon_lr: float = 2e-3
    adamw_lr: float = 5e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    lora: LoraConfig = field(default_factory=LoraConfig)
    # "ce": the task's cross-entropy (Algorithm 1). "distill": KL(teacher || student) on the
    # targets, the teacher being the base model as the stage starts, with full attention over the
    # whole row (no eviction, no sleep): no labels needed (data.task: text), mixed with
    # (1 - distill_weight) x CE.
    objective: str = "ce"
    distill_weight: float = 1.0
    distill_temperature: float = 1.0


@dataclass
class TrainConfig:
    """The whole run: model, data, the loop's settings and the two stages."""

    output_dir: str = "runs/sleep"
    # Also publish {output_dir}/adapter: only the trained blocks + sleep config, referring to the
    # base (sleep_retrofit.adapters). Needs stages that leave the base untouched.
    save_adapter: bool = False
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: ["stage1", "stage2"])
    batch_size: int = 8
    eval_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    cpu: bool = False
    max_grad_norm: float | None = 1.0
    gradient_checkpointing: bool = False
    save_every: int = 100
    save_total_limit: int | None = 2
    eval_every: int | None = None
    log_every: int = 10
    resume: bool = True
    progress: bool = True
    find_unused_parameters: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig = field(default_factory=lambda: StageConfig(eviction="hard", finetune="fast_weights"))
    stage2: StageConfig = field(default_factory=lambda: StageConfig(eviction="sliding", epochs=2.0))

    def stage(self, name: str) -> StageConfig:
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- building
def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name in _fields(cls):
        keys.append(prefix + name)
        nested = _nested_class(cls, name)
        if nested is not None:
            keys += _all_keys(nested, f"{prefix}{name}.")
    return keys


_NESTED: dict[tuple[type, str], type] = {}


def _nested_class(cls: type, name: str) -> type | None:
    return _NESTED.get((cls, name))


_NESTED.update(
    {
        (TrainConfig, "model"): ModelConfig,
        (TrainConfig, "data"): DataConfig,
        (TrainConfig, "stage1"): StageConfig,
        (TrainConfig, "stage2"): StageConfig,
        (StageConfig, "lora"): LoraConfig,
    }
)


def _unknown_key_error(unknown: list[str], cls: type, prefix: str) -> ConfigError:
    valid = _all_keys(TrainConfig)
    parts = []
    for key in unknown:
        full = prefix + key
        close = difflib.get_close_matches(full, valid, n=1, cutoff=0.5)
        if not close:  # try the last component alone, among this section's keys
            local = difflib.get_close_matches(key, list(_fields(cls)), n=1, cutoff=0.5)
            close = [prefix + local[0]] if local else []
        parts.append(f"{full!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    section = prefix.rstrip(".") or "top level"
    return ConfigError(
        f"unknown config key(s) {', '.join(parts)} in {section}; valid keys there: {sorted(_fields(cls))}"
    )


def _build(cls: type, values: Any, prefix: str, base: Any = None) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} must be a mapping, got {values!r}")
    known = _fields(cls)
    unknown = [k for k in values if k not in known]
    if unknown:
        raise _unknown_key_error(unknown, cls, prefix)
    obj = base if base is not None else cls()
    for key, value in values.items():
        nested = _nested_class(cls, key)
        if nested is not None:
            setattr(
                obj,
                key,
                _build(nested, value if value is not None else {}, f"{prefix}{key}.", getattr(obj, key)),
            )
        else:
            setattr(obj, key, value)
    return obj


def config_from_dict(values: dict[str, Any] | None) -> TrainConfig:
    """A validated :class:`TrainConfig` from a (YAML-shaped) dict; stages missing from the dict
    keep their defaults (stage 1: hard eviction, fast weights only; stage 2: sliding, full)."""
    config = _build(TrainConfig, dict(values or {}), "")
    validate(config)
    return config


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. stage1.max_steps=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: cannot parse the value: {err}") from None
    return key.split("."), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted `key=value` overrides (values parsed as YAML) into a nested dict; the keys are
    checked when the dict becomes a :class:`TrainConfig`."""
    out = _deep_copy(values)
    for text in overrides:
        path, value = _parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in values.items()}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (None = all defaults), apply `overrides`, validate.

    Raises:
        ConfigError: for a missing or unreadable file, unknown keys (with the closest valid key),
            or values out of range.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(err)}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys, got {type(values).__name__}")
    return config_from_dict(apply_overrides(values, list(overrides or [])))


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's multi-line report as one line: the problem and where (line, column are 1-based)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem


# ----------------------------------------------------------------------------- validation
def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool: YAML's yes/no; not nan/inf: `lr=.inf` trains to NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_writable_dir(name: str, path: Path) -> None:
    """A directory, or a path whose nearest existing ancestor is a directory we may write into."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{name} {str(path)!r} is a file; give a directory")
    ancestor = nearest_existing(path)
    if not ancestor.is_dir():
        raise ConfigError(f"{name} {str(path)!r} lies under the file {str(ancestor)!r}; give a directory")
    if not writable_directory(ancestor):
        raise ConfigError(f"{name} {str(path)!r}: cannot write under {str(ancestor)!r}")


def _positive_int(name: str, value: Any) -> None:
    if not is_int(value) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = (
            " (YAML reads an unquoted yes/no/on/off/true/false as a boolean: quote the string)"
            if isinstance(value, bool)
            else ""
        )
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}{hint}")


def validate(config: TrainConfig) -> None:
    """Check every value of `config`; raises :class:`ConfigError` naming the key."""
    model, data = config.model, config.data
    if not isinstance(config.output_dir, str) or not config.output_dir:
        raise ConfigError(f"output_dir must be a non-empty path, got {config.output_dir!r}")
    _check_writable_dir("output_dir", Path(config.output_dir).expanduser())
    if not is_int(config.seed):
        raise ConfigError(f"seed must be an int, got {config.seed!r}")
    stages = config.stages
    if isinstance(stages, str):
        stages = config.stages = [stages]
    if not isinstance(stages, list) or not stages:
        raise ConfigError(f"stages must be a non-empty list of {list(STAGES)}, got {config.stages!r}")
    for name in stages:
        _choice("stages entries", name, STAGES)
    if len(set(stages)) != len(stages) or list(stages) != sorted(stages):
        raise ConfigError(f"stages must be in order without repeats, got {stages!r}")
    for name in ("batch_size", "eval_batch_size", "gradient_accumulation_steps", "save_every", "log_every"):
        _positive_int(name, getattr(config, name))
    if config.save_total_limit is not None:
        _positive_int("save_total_limit", config.save_total_limit)
    if config.eval_every is not None:
        _positive_int("eval_every", config.eval_every)
    if config.mixed_precision is False:  # YAML 1.1 reads `mixed_precision: no` as false
        config.mixed_precision = "no"
    _choice("mixed_precision", config.mixed_precision, MIXED_PRECISION)
    if config.max_grad_norm is not None and (
        not _is_number(config.max_grad_norm) or config.max_grad_norm <= 0
    ):
        raise ConfigError(f"max_grad_norm must be a positive number or null, got {config.max_grad_norm!r}")
    for name in (
        "cpu",
        "gradient_checkpointing",
        "resume",
        "progress",
        "find_unused_parameters",
        "save_adapter",
    ):
        if not isinstance(getattr(config, name), bool):
            raise ConfigError(f"{name} must be true or false, got {getattr(config, name)!r}")

    if not isinstance(model.source, str) or not model.source:
        raise ConfigError(f"model.source must be 'toy', a preset name or a path, got {model.source!r}")
    _positive_int("model.passes (N)", model.passes)
    _positive_int("model.window (L)", model.window)
    _choice("model.eviction", model.eviction, ("hard", "sliding"))
    for name in ("hidden_size", "num_layers", "num_heads"):
        _positive_int(f"model.{name}", getattr(model, name))
    for name in ("intermediate_size", "gdn_heads", "gdn_head_dim"):
        if getattr(model, name) is not None:
            _positive_int(f"model.{name}", getattr(model, name))
    if not _is_number(model.initializer_range) or not 0 < model.initializer_range < 10:
        raise ConfigError(
            f"model.initializer_range must be a number in (0, 10), got {model.initializer_range!r}"
        )
    if model.source == "toy" and model.hidden_size % model.num_heads:
        raise ConfigError(
            f"model.hidden_size {model.hidden_size} must be divisible by model.num_heads {model.num_heads}"
        )
    if model.source == "toy" and model.num_layers % 2:
        raise ConfigError(
            f"model.num_layers must be even for the toy hybrid (attn/GDN pairs), got {model.num_layers}"
        )
    _choice("model.dtype", model.dtype, ("float32", "bfloat16"))
    if model.fast_weights is not None:
        _choice("model.fast_weights", model.fast_weights, ("jet", "gdn", "mamba2"))

    _choice("data.task", data.task, TASK_NAMES)
    _positive_int("data.train_examples", data.train_examples)
    _positive_int("data.eval_examples", data.eval_examples)
    if not isinstance(data.options, dict):
        raise ConfigError(f"data.options must be a mapping of task config fields, got {data.options!r}")
    if not isinstance(data.mixture, list) or not all(isinstance(m, dict) for m in data.mixture):
        raise ConfigError(f"data.mixture must be a list of option mappings, got {data.mixture!r}")
    if data.mixture and data.path is not None:
        raise ConfigError("data.mixture applies to generated data; it cannot be combined with data.path")
    mixed_steps = {m.get("steps", data.options.get("steps")) for m in data.mixture}
    if data.task == "rule110" and len(mixed_steps) > 1:
        announced = {m.get("announce_steps", data.options.get("announce_steps", False)) for m in data.mixture}
        if announced != {True}:
            raise ConfigError(
                f"data.mixture mixes Rule 110 steps {sorted(mixed_steps, key=str)} without telling the model "
                "which t an example asks: set data.options.announce_steps: true (each context chunk then "
                "starts with a t token; use model.window = width + 1), or train one t per run"
            )
    if data.task == "text":
        if not isinstance(data.path, str) or not data.path:
            raise ConfigError("data.task=text needs data.path: a text file, a directory or a datasets id")
        local = Path(data.path).expanduser().exists()
        if not local and (data.path.startswith((".", "/", "~")) or data.path.count("/") != 1):
            raise ConfigError(f"data.path {data.path!r} is no local file or directory (nor a datasets id)")
    elif data.path is not None:
        if not Path(data.path).expanduser().exists():
            raise ConfigError(f"data.path does not exist: {data.path}")
        if data.task != "gsm_infinite":
            raise ConfigError(
                f"data.path applies to gsm_infinite and text only; {data.task} data is generated"
            )

    if config.save_adapter is True:
        if model.source == "toy":
            raise ConfigError(
                "save_adapter needs a base to refer to; model.source=toy builds one from scratch"
            )
        changing = [n for n in stages if n != "stage1" and config.stage(n).finetune == "full"]
        if changing:
            raise ConfigError(
                f"save_adapter keeps the base untouched, but {changing[0]}.finetune='full' "
                "trains all of it; use finetune: lora or fast_weights (or drop save_adapter)"
            )

    for name in STAGES:
        stage = config.stage(name)
        prefix = f"{name}."
        if not _is_number(stage.epochs) or stage.epochs <= 0:
            raise ConfigError(f"{prefix}epochs must be a positive number, got {stage.epochs!r}")
        if stage.max_steps is not None:
            _positive_int(f"{prefix}max_steps", stage.max_steps)
        if stage.passes is not None:
            _positive_int(f"{prefix}passes (N)", stage.passes)
        if stage.eviction is not None:
            _choice(f"{prefix}eviction", stage.eviction, ("hard", "sliding"))
        _choice(f"{prefix}finetune", stage.finetune, FINETUNE_MODES)
        _choice(f"{prefix}optimizer", stage.optimizer, OPTIMIZERS)
        for key in ("muon_lr", "adamw_lr"):
            value = getattr(stage, key)
            if not _is_number(value) or value < 0:
                raise ConfigError(f"{prefix}{key} must be a finite number >= 0, got {value!r}")
        if not _is_number(stage.weight_decay) or stage.weight_decay < 0:
            raise ConfigError(f"{prefix}weight_decay must be >= 0, got {stage.weight_decay!r}")
        if not is_int(stage.warmup_steps) or stage.warmup_steps < 0:
            raise ConfigError(f"{prefix}warmup_steps must be an integer >= 0, got {stage.warmup_steps!r}")
        if not _is_number(stage.min_lr_ratio) or not 0 <= stage.min_lr_ratio <= 1:
            raise ConfigError(f"{prefix}min_lr_ratio must be in [0, 1], got {stage.min_lr_ratio!r}")
        _choice(f"{prefix}objective", stage.objective, OBJECTIVES)
        if not _is_number(stage.distill_weight) or not 0 <= stage.distill_weight <= 1:
            raise ConfigError(f"{prefix}distill_weight must be in [0, 1], got {stage.distill_weight!r}")
        if not _is_number(stage.distill_temperature) or stage.distill_temperature <= 0:
            raise ConfigError(
                f"{prefix}distill_temperature must be a positive number, got {stage.distill_temperature!r}"
            )
        _positive_int(f"{prefix}lora.r", stage.lora.r)
        if not _is_number(stage.lora.alpha) or stage.lora.alpha <= 0:
            raise ConfigError(f"{prefix}lora.alpha must be positive, got {stage.lora.alpha!r}")
        if not _is_number(stage.lora.dropout) or not 0 <= stage.lora.dropout < 1:
            raise ConfigError(f"{prefix}lora.dropout must be in [0, 1), got {stage.lora.dropout!r}")
        if not isinstance(stage.lora.target_modules, list) or not stage.lora.target_modules:
            raise ConfigError(f"{prefix}lora.target_modules must be a non-empty list of module names")
    # The paper's warm-up: fast weights only, under hard eviction.
    if config.stage1.finetune != "fast_weights":
        raise ConfigError(
            f"stage1.finetune must be 'fast_weights' (stage 1 trains only the fast-weight blocks), "
            f"got {config.stage1.finetune!r}"
        )
    if config.stage1.eviction not in (None, "hard"):
        raise ConfigError(f"stage1.eviction must be 'hard' (the warm-up), got {config.stage1.eviction!r}")
