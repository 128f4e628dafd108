"""The model side of training: build or load the model, choose what trains, save the result."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from ..converted import check_checkpoint, is_converted_checkpoint
from ..errors import ConvertError
from ..modeling import SleepRetrofitForCausalLM
from ..sleep import SleepSettings
from .config import ConfigError, LoraConfig, TrainConfig

__all__ = [
    "build_model",
    "check_vocabulary",
    "enable_activation_checkpointing",
    "fast_weight_parameter_names",
    "prepare_trainable",
    "save_final_model",
]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _toy_vocab_size(config: TrainConfig) -> int:
    from .data import training_tokenizer

    return len(training_tokenizer(config, None))


def _unloadable_source(source: str, local: bool, error: Exception) -> str:
    """One line for a model.source that does not load: what failed, and for a Hub id how to
    point the config at a local copy (the usual cause is no network)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    if local:
        return f"model.source {source!r} could not be loaded: {reason}"
    return (
        f"model.source {source!r} could not be loaded from the Hugging Face Hub ({reason}). Without "
        f"network, download it where you have one (`hf download {source} --local-dir DIR`), copy DIR "
        f"here and set model.source=DIR (a key=value override on the command line works)"
    )


def build_model(config: TrainConfig, init_from: Path | None = None) -> tuple[SleepRetrofitForCausalLM, Any]:
    """The model to train and its own tokenizer (None when it has none).

    `init_from` (a converted checkpoint, e.g. the previous stage's result) wins over
    ``model.source``; N, L and the eviction of the config override the checkpoint's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_config = config.model
    settings = SleepSettings(
        passes=model_config.passes, window=model_config.window, eviction=model_config.eviction
    )
    source = str(init_from) if init_from is not None else model_config.source
    dtype = _DTYPES[model_config.dtype]
    if source == "toy":
        from ..toy import build_toy_hybrid

        if config.data.task in ("gsm_infinite", "text"):
            raise ConfigError(
                f"model.source=toy builds a synthetic-task model; {config.data.task} needs a pretrained model"
            )
        model = build_toy_hybrid(
            _toy_vocab_size(config),
            hidden_size=model_config.hidden_size,
            num_layers=model_config.num_layers,
            num_heads=model_config.num_heads,
            intermediate_size=model_config.intermediate_size,
            gdn_heads=model_config.gdn_heads,
            gdn_head_dim=model_config.gdn_head_dim,
            initializer_range=model_config.initializer_range,
            passes=settings.passes,
            window=settings.window,
            eviction=settings.eviction,
            seed=config.seed,
        )
        return model.to(dtype), None

    from ..presets import is_preset, load_preset
    from ..retrofit import default_plan

    if is_preset(source):
        base, tokenizer = load_preset(source, seed=config.seed, dtype=dtype)
        plan = default_plan(base.config, kind=model_config.fast_weights)
        return SleepRetrofitForCausalLM.from_base(base, plan=plan, settings=settings), tokenizer

    path = Path(source).expanduser()
    if path.exists() and is_converted_checkpoint(path):
        try:
            check_checkpoint(path)  # config, weight files and tokenizer, before loading anything
        except ConvertError as error:
            raise ConfigError(f"model.source: {error}") from None
        model = AutoModelForCausalLM.from_pretrained(
            str(path), passes=settings.passes, window=settings.window, eviction=settings.eviction, dtype=dtype
        )
        tokenizer = (
            AutoTokenizer.from_pretrained(str(path)) if (path / "tokenizer_config.json").is_file() else None
        )
        return model, tokenizer
    if not path.exists() and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise ConfigError(
            f"model.source {source!r} is not 'toy', a preset, an existing directory or a Hub id (owner/name)"
        )
    # A base model (directory or Hub id): convert on the fly.
    try:
        base = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, trust_remote_code=model_config.trust_remote_code
        )
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError) as error:
        raise ConfigError(_unloadable_source(source, path.exists(), error)) from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=model_config.trust_remote_code)
    except (OSError, ValueError):
        tokenizer = None
    plan = default_plan(base.config, kind=model_config.fast_weights)
    return SleepRetrofitForCausalLM.from_base(base, plan=plan, settings=settings), tokenizer


def check_vocabulary(tokenizer: Any, model: nn.Module) -> None:
    """A tokenizer whose ids do not fit the model's embedding is a ConfigError."""
    vocab_size = model.get_input_embeddings().num_embeddings
    size = len(tokenizer)
    if size > vocab_size:
        raise ConfigError(
            f"the tokenizer has {size} tokens but the model's vocabulary (vocab_size) is {vocab_size}: "
            "token ids would fall outside the embedding; use a matching tokenizer or a larger model"
        )


def fast_weight_parameter_names(model: SleepRetrofitForCausalLM) -> list[str]:
    """Names of the fast-weight parameters (:meth:`SleepRetrofitForCausalLM.fast_weight_prefixes`)."""
    prefixes = tuple(model.fast_weight_prefixes())
    return [name for name, _ in model.named_parameters() if name.startswith(prefixes)]


def prepare_trainable(model: SleepRetrofitForCausalLM, finetune: str, lora: LoraConfig) -> nn.Module:
    """Set what trains: ``fast_weights`` (only the fast-weight blocks), ``full`` (everything) or
    ``lora`` (PEFT LoRA adapters on the base's projections + the fast-weight blocks in full)."""
    fast = set(fast_weight_parameter_names(model))
    if finetune == "full":
        # Everything sleep uses: parameters outside every sleep forward (Ouro's exit gate) get no
        # gradient, and DDP would wait for theirs forever ("Expected to have finished reduction").
        unused = set(model.parameters_outside_sleep())
        for name, param in model.named_parameters():
            param.requires_grad_(name not in unused)
        return model
    if finetune == "fast_weights":
        if not fast:
            raise ConfigError("finetune=fast_weights, but the model has no fast-weight parameters")
        for name, param in model.named_parameters():
            param.requires_grad_(name in fast)
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    modules_to_save = [p.rstrip(".") for p in model.fast_weight_prefixes()]
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        exclude_modules=model.lora_exclude_modules() if modules_to_save else None,
        modules_to_save=[m for m in modules_to_save if m != "fast_weights" or len(model.fast_weights)],
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as error:  # PEFT's wording differs across versions
        if not any(s in str(error) for s in ("not found in the base model", "No modules were targeted")):
            raise
        raise ConfigError(
            f"lora.target_modules {lora.target_modules} match no Linear layer of the base model "
            "outside the fast-weight blocks"
        ) from None


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each consolidation pass in backward (bounds memory by one pass, not N)."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    enable = getattr(target, "activation_checkpointing_enable", None)
    if enable is None:
        raise ConfigError("gradient_checkpointing: this model has no per-pass activation checkpointing")
    enable()


def save_final_model(
    model: nn.Module, tokenizer: Any, directory: Path, lora_directory: Path | None = None
) -> Path:
    """Save `model` as a converted checkpoint (LoRA adapters merged) + `tokenizer` into `directory`;
    with `lora_directory`, a PEFT model's adapters are also saved there unmerged (PEFT's format)."""
    if hasattr(model, "merge_and_unload"):
        if lora_directory is not None:
            model.save_pretrained(lora_directory)
        model = model.merge_and_unload()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    model.eval()
    model.save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    model.train(was_training)
    return directory
