"""Adapter-only checkpoints: only what the retrofit added, with a reference to the base.

A full converted checkpoint repeats the base model's weights. An adapter-only one holds the
fast-weight blocks (in the base's dtype) and the sleep config, plus ``base_reference`` in its
config.json: where the base comes from (a local directory, a built-in preset or a Hub id) and
the SHA-256 of its weights' contents. ``AutoModelForCausalLM.from_pretrained(dir)`` on it loads
the base from that reference, refuses a base whose weights hash differently (another revision,
a fine-tuned copy), and puts the blocks back: the model equals the full checkpoint's.

    directory/config.json                  SleepRetrofitConfig + base_reference {source, sha256}
    directory/sleep_adapter.safetensors    fast_weights.* tensors
    directory/lora/                        PEFT LoRA adapters on the base (only when trained with them)
    directory/tokenizer files

With ``lora/``, loading merges the LoRA adapters into the base after the hash check, as the
trainer merges them into its full checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_WEIGHTS = "sleep_adapter.safetensors"
REFERENCE_KEY = "base_reference"
ADDED_PREFIX = "fast_weights."
LORA_DIR = "lora"
_PEFT_PREFIX = "base_model.model."

__all__ = [
    "ADAPTER_WEIGHTS",
    "BaseMismatchError",
    "is_adapter_checkpoint",
    "lora_parameter_names",
    "load_referenced_base",
    "load_adapter_checkpoint",
    "save_adapter_checkpoint",
    "weights_sha256",
]


class BaseMismatchError(ValueError):
    """The base an adapter refers to is missing or is not the one it was made for."""


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 over a model's state dict: every tensor's name, dtype, shape and bytes, by name."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def is_adapter_checkpoint(directory: str | os.PathLike) -> bool:
    path = Path(directory)
    return path.is_dir() and (path / ADAPTER_WEIGHTS).is_file()


def save_adapter_checkpoint(
    model: nn.Module,
    directory: str | os.PathLike,
    base_source: str,
    *,
    base_sha256: str | None = None,
    lora: str | os.PathLike | None = None,
) -> None:
    """Write `model`'s added tensors and config (with the base reference) into `directory`.

    base_sha256: the hash of the base as stored (default: of ``model.base`` as it is, right when
    the model was built from the stored base). The added tensors are written as the model holds them.
    lora: a PEFT adapter directory (LoRA on the base) to ship as ``lora/``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.base_reference = {"source": base_source, "sha256": base_sha256 or weights_sha256(model.base)}
    from .modeling import SHIM_MODULE, SHIM_SOURCE

    try:
        config.auto_map = {
            "AutoConfig": f"{SHIM_MODULE}.SleepRetrofitConfig",
            "AutoModelForCausalLM": f"{SHIM_MODULE}.SleepRetrofitForCausalLM",
        }
        config.save_pretrained(path)
    finally:
        del config.base_reference  # the in-memory model stays a full model
    (path / f"{SHIM_MODULE}.py").write_text(SHIM_SOURCE)
    added = {
        name: tensor.detach().contiguous()
        for name, tensor in model.state_dict().items()
        if name.startswith(ADDED_PREFIX)
    }
    save_file(added, str(path / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    if lora is not None:
        (path / LORA_DIR).mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(Path(lora) / name, path / LORA_DIR / name)


def lora_parameter_names(lora: str | os.PathLike) -> set[str]:
    """Names (in the converted model) of the parameters a PEFT adapter directory changes when
    merged: the weight and bias of every LoRA-adapted Linear and every module it saves whole."""
    from safetensors import safe_open

    names = set()
    with safe_open(str(Path(lora) / "adapter_model.safetensors"), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118  (safe_open has no __iter__)
            key = key.removeprefix(_PEFT_PREFIX)
            if ".lora_" in key:
                module = key.split(".lora_")[0]
                names.update((f"{module}.weight", f"{module}.bias"))
            else:
                names.add(key)
    return names


def load_referenced_base(source: str) -> nn.Module:
    """The base an adapter refers to, as stored (its own dtype)."""
    from transformers import AutoModelForCausalLM

    from .presets import is_preset, load_preset

    if is_preset(source):
        base, _ = load_preset(source)
        return base
    if not Path(source).exists() and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise BaseMismatchError(f"the base model {source!r} this adapter refers to does not exist")
    try:
        return AutoModelForCausalLM.from_pretrained(source, dtype="auto")
    except (OSError, ValueError) as error:
        raise BaseMismatchError(
            f"cannot load the base model {source!r} this adapter refers to: {error}"
        ) from None


def load_adapter_checkpoint(directory: str | os.PathLike, config: Any = None, **overrides: Any) -> nn.Module:
    """The full model of an adapter-only checkpoint (see the module docstring). `overrides`:
    passes / window / eviction (None = keep) and dtype, as ``from_pretrained`` takes them."""
    from .modeling import SleepRetrofitConfig, SleepRetrofitForCausalLM

    path = Path(directory)
    dtype = overrides.pop("dtype", None) or overrides.pop("torch_dtype", None)
    settings = {
        k: overrides.pop(k)
        for k in ("passes", "window", "eviction", "tolerance")
        if overrides.get(k) is not None
    }
    if config is None:
        config = SleepRetrofitConfig.from_pretrained(path, **settings)
    else:
        for name, value in settings.items():
            setattr(config, name, value)
    reference = getattr(config, REFERENCE_KEY, None)
    if not isinstance(reference, dict) or not {"source", "sha256"} <= set(reference):
        raise BaseMismatchError(f"{str(path)!r} has {ADAPTER_WEIGHTS} but its config names no base_reference")
    base = load_referenced_base(reference["source"])
    found = weights_sha256(base)
    if found != reference["sha256"]:
        raise BaseMismatchError(
            f"the base model {reference['source']!r} is not the one this adapter was made for (weights "
            f"sha256 {found[:12]}..., expected {reference['sha256'][:12]}...): another revision or a "
            "modified copy"
        )
    if dtype not in (None, "auto"):
        base = base.to(dtype)
    config.base_config = base.config
    # Built the way from_pretrained builds a model in the base's dtype (parameters a block creates
    # in float32 on purpose, such as decay logs, stay float32), so both load the same model.
    default = torch.get_default_dtype()
    torch.set_default_dtype(next(base.parameters()).dtype)
    try:
        model = SleepRetrofitForCausalLM(config, base_model=base)
    finally:
        torch.set_default_dtype(default)
    added = load_file(str(path / ADAPTER_WEIGHTS))
    expected = {name for name in model.state_dict() if name.startswith(ADDED_PREFIX)}
    if set(added) != expected:
        missing, unexpected = sorted(expected - set(added)), sorted(set(added) - expected)
        raise BaseMismatchError(
            f"{str(path / ADAPTER_WEIGHTS)!r} does not fit its config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    lora = path / LORA_DIR
    if (lora / "adapter_config.json").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, lora).merge_and_unload()
    model.load_state_dict(added, strict=False)
    return model.eval()
