"""Strict checkpoint loading for the native families.

``transformers.PreTrainedModel.from_pretrained`` (5.x) only *logs* missing tensors (they are then
randomly initialised, so a truncated or renamed checkpoint silently yields a broken model) and fails
on a wrong-shaped tensor with a generic "look at the above report" RuntimeError. For checkpoints of
our own families we want the opposite: a missing or wrong-shaped tensor is an error that names the
key and the expected shape; tensors the model does not know are reported in one warning.

``StrictLoadingMixin`` puts that behaviour on ``from_pretrained`` (hence on
``AutoModelForCausalLM.from_pretrained`` too). Everything else - safetensors, sharded
``model.safetensors.index.json``, dtype, device_map - is transformers' own loading. Pass
``strict=False`` to get transformers' permissive behaviour back.

Upstream checkpoint directories carry an ``auto_map`` pointing at remote-code files
(``configuration_ouro.py``, ...). Because our config classes are registered with ``AutoConfig`` under
the same ``model_type``, transformers resolves to the local classes and never needs those files nor
``trust_remote_code``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["CheckpointMismatchError", "StrictLoadingMixin", "check_loading_info"]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model: tensors are missing or have the wrong shape."""


def _shape(shape: Any) -> list[int]:
    return [int(s) for s in shape]


def check_loading_info(model: nn.Module, loading_info: dict[str, Any], *, source: str = "checkpoint") -> None:
    """Raise on missing / wrong-shaped tensors and warn about unknown ones.

    Args:
        model: the loaded model (used for the expected shapes of missing tensors).
        loading_info: the dict ``from_pretrained(..., output_loading_info=True)`` returns, with
            ``missing_keys``, ``unexpected_keys`` and ``mismatched_keys`` (key, checkpoint shape,
            model shape).
        source: how to name the checkpoint in messages (e.g. its directory).

    Raises:
        CheckpointMismatchError: listing every missing key with its expected shape and every
            mismatched key with the expected and the found shape.
    """
    expected = {name: _shape(t.shape) for name, t in model.state_dict().items()}
    problems = []
    for key in sorted(loading_info.get("missing_keys") or ()):
        problems.append(f"missing tensor {key!r}: expected shape {expected.get(key, '?')}")
    for key, checkpoint_shape, model_shape in sorted(loading_info.get("mismatched_keys") or ()):
        problems.append(
            f"tensor {key!r} has shape {_shape(checkpoint_shape)} in the checkpoint, "
            f"expected shape {_shape(model_shape)}"
        )
    for message in loading_info.get("error_msgs") or ():
        problems.append(str(message))
    if problems:
        raise CheckpointMismatchError(
            f"{source} does not match {type(model).__name__} ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
        )
    unexpected = sorted(loading_info.get("unexpected_keys") or ())
    if unexpected:
        warnings.warn(
            f"{source} has {len(unexpected)} tensor(s) that {type(model).__name__} does not use and "
            f"that were ignored: {', '.join(unexpected)}",
            UserWarning,
            stacklevel=3,
        )


class StrictLoadingMixin:
    """Mixin for a ``PreTrainedModel`` subclass: ``from_pretrained`` checks the checkpoint strictly.

    Put it before ``PreTrainedModel`` in the bases. Extra keyword ``strict`` (default True); with
    ``strict=False`` transformers' own (warn and randomly initialise) behaviour is kept.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
        if not strict:
            return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        if kwargs.get("ignore_mismatched_sizes"):
            raise ValueError("ignore_mismatched_sizes=True needs strict=False")
        # Let transformers finish loading despite a size mismatch, so the mismatch can be reported
        # by name below instead of through its generic RuntimeError.
        kwargs["ignore_mismatched_sizes"] = True
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        check_loading_info(model, info, source=f"checkpoint {str(pretrained_model_name_or_path)!r}")
        realign_cpu_tensors(model)
        return (model, info) if want_info else model


@torch.no_grad()
def realign_cpu_tensors(model: nn.Module) -> None:
    """Copy loaded CPU tensors that start at addresses not 64-byte aligned into fresh memory.

    safetensors loads tensors in place inside the file buffer, so a checkpoint with odd-sized
    tensors (``A_log`` [H]) leaves later tensors unaligned; CPU kernels then take other
    vectorised paths and outputs differ from the saved model's in the last bits. The copies
    keep "save -> load -> identical logits"."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.data_ptr() % 64:
            tensor.data = tensor.data.clone()
