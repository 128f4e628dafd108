"""The model families sleep-retrofit supports, and how a config is recognised as one of them.

A family is recognised from ``config.model_type`` alone:

=============  ==============================  =======================================
family         model_type(s)                   implementation
=============  ==============================  =======================================
ouro           ouro                            native: sleep_retrofit.models.ouro
jet_nemotron   jet_nemotron                    native: sleep_retrofit.models.jet_nemotron
llama          llama, qwen2, qwen3, mistral    transformers' own classes
=============  ==============================  =======================================

:func:`register_auto_classes` (run by ``import sleep_retrofit``) registers the native configs with
``AutoConfig`` and the native models with ``AutoModel`` / ``AutoModelForCausalLM``, so
``AutoModelForCausalLM.from_pretrained(dir)`` works without ``trust_remote_code``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = [
    "FAMILIES",
    "ModelFamily",
    "UnsupportedModelError",
    "register_auto_classes",
    "resolve_family",
    "supported_model_types",
]


class UnsupportedModelError(ValueError):
    """The config's model_type belongs to no supported family."""


@dataclass(frozen=True)
class ModelFamily:
    """One supported family.

    Attributes:
        name: family name ("ouro", "jet_nemotron", "llama").
        model_types: the ``config.model_type`` values recognised as this family.
        native: True when the model classes are implemented in this package (False: transformers').
        module: for native families, the module holding ``config_class_name`` / ``causal_lm_class_name``.
        config_class_name / base_model_class_name / causal_lm_class_name: class names in ``module``.
    """

    name: str
    model_types: tuple[str, ...]
    native: bool
    module: str | None = None
    config_class_name: str | None = None
    base_model_class_name: str | None = None
    causal_lm_class_name: str | None = None

    def _load(self, class_name: str | None) -> type:
        if not self.native or self.module is None or class_name is None:
            raise ValueError(
                f"family {self.name!r} uses transformers' own classes; load it with AutoConfig/AutoModel"
            )
        return getattr(importlib.import_module(self.module), class_name)

    @property
    def config_class(self) -> type:
        """The native config class (imported on first use)."""
        return self._load(self.config_class_name)

    @property
    def causal_lm_class(self) -> type:
        """The native ``...ForCausalLM`` class (imported on first use)."""
        return self._load(self.causal_lm_class_name)

    @property
    def base_model_class(self) -> type:
        """The native base model class (imported on first use)."""
        return self._load(self.base_model_class_name)


def _native_family(name: str, class_prefix: str) -> ModelFamily:
    """A family implemented in ``sleep_retrofit.models.<name>`` with transformers' class naming:
    ``<Prefix>Config``, ``<Prefix>Model``, ``<Prefix>ForCausalLM``; model_type ``name``."""
    return ModelFamily(
        name=name,
        model_types=(name,),
        native=True,
        module=f"sleep_retrofit.models.{name}",
        config_class_name=f"{class_prefix}Config",
        base_model_class_name=f"{class_prefix}Model",
        causal_lm_class_name=f"{class_prefix}ForCausalLM",
    )


FAMILIES: tuple[ModelFamily, ...] = (
    _native_family("ouro", "Ouro"),
    _native_family("jet_nemotron", "JetNemotron"),
    ModelFamily(name="llama", model_types=("llama", "qwen2", "qwen3", "mistral"), native=False),
)

_BY_MODEL_TYPE = {model_type: family for family in FAMILIES for model_type in family.model_types}


def supported_model_types() -> list[str]:
    """Every recognised ``model_type``, sorted."""
    return sorted(_BY_MODEL_TYPE)


def resolve_family(config_or_model_type: Any) -> ModelFamily:
    """The family of a config, a model (its ``.config``), a config dict or a ``model_type`` string.

    Raises:
        UnsupportedModelError: for any other model_type, listing the supported ones.
    """
    source = config_or_model_type
    if hasattr(source, "config") and not isinstance(source, dict):  # a model
        source = source.config
    if isinstance(source, str):
        model_type = source
    elif isinstance(source, dict):
        model_type = source.get("model_type")
    else:
        model_type = getattr(source, "model_type", None)
    family = _BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) else None
    if family is None:
        supported = ", ".join(
            f"{f.name} (model_type {' / '.join(repr(t) for t in f.model_types)})" for f in FAMILIES
        )
        raise UnsupportedModelError(f"unsupported model_type {model_type!r}; supported families: {supported}")
    return family


_registered: set[str] = set()


def register_auto_classes() -> list[str]:
    """Register the native configs and models with transformers' Auto classes (idempotent).

    A native family whose module cannot be imported is skipped with a warning, so one family's
    breakage does not make the package unimportable.

    Returns:
        The names of the families registered so far.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    for family in FAMILIES:
        if not family.native or family.name in _registered:
            continue
        try:
            config_class = family.config_class
            base_class = family.base_model_class
            causal_lm_class = family.causal_lm_class
        except (ImportError, AttributeError) as error:
            logger.warning(f"sleep_retrofit: model family {family.name!r} is unavailable: {error}")
            continue
        # exist_ok: re-registering the same classes (e.g. after importlib.reload) must not fail.
        AutoConfig.register(family.model_types[0], config_class, exist_ok=True)
        AutoModel.register(config_class, base_class, exist_ok=True)
        AutoModelForCausalLM.register(config_class, causal_lm_class, exist_ok=True)
        _registered.add(family.name)
    return sorted(_registered)
