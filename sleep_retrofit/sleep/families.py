"""What sleep knows about each model family, in one place.

One adapter per family says where its layers live and how one of them is called (its block),
each layer's own attention window, the span sleep loops by default and which spans it allows,
how many steps one pass of the loop body takes and the norm between them (Ouro), which of its own
modules carry fast-weight state, and the fast-weight blocks a conversion inserts by default:

    family         default loop span               default inserted blocks
    Ouro           the whole shared stack          6 (Jet), evenly spaced; a body pass is
                                                   total_ut_steps steps, the model norm after each
    Jet-Nemotron   the middle half of its layers   none: its own JetBlocks are the fast weights
    Llama family   the middle half of its layers   GDN after every 4th layer (moved into the
                                                   loop span when none falls in it)

A new family is one adapter here, its entry in models/registry.py, and its tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.registry import resolve_family
from .blocks import PassContext, StackBlock

__all__ = [
    "DefaultBlocks",
    "FamilyAdapter",
    "JetNemotronLayer",
    "LlamaFamilyLayer",
    "OuroLayer",
    "family_adapter",
]


class LlamaFamilyLayer(StackBlock):
    """A transformers decoder layer (Llama, Qwen2, Qwen3, Mistral): its attention calls
    ``cache.update(k, v, layer_idx)``."""

    def __init__(self, layer: nn.Module, window: int | None):
        self.layer, self.window = layer, window

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext, step: int = 0) -> torch.Tensor:
        return self.layer(
            hidden_states,
            attention_mask=ctx.attention_bias(self.window),
            position_embeddings=ctx.position_embeddings,
            cache=ctx.cache,
            use_cache=True,
        )


class OuroLayer(StackBlock):
    """An Ouro shared layer; its KV slot is (step, layer) as in Ouro's own cache."""

    def __init__(self, layer: nn.Module, num_layers: int, window: int | None):
        self.layer, self.num_layers, self.window = layer, num_layers, window

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext, step: int = 0) -> torch.Tensor:
        return self.layer(
            hidden_states,
            position_embeddings=ctx.position_embeddings,
            attention_mask=ctx.attention_bias(self.window),
            cache=ctx.cache,
            cache_layer_idx=step * self.num_layers + self.layer.layer_idx,
        )


class JetNemotronLayer(StackBlock):
    """A Jet-Nemotron layer: "jet" layers keep a FastWeightState (``cache.get_jet_state``)."""

    def __init__(self, layer: nn.Module, window: int | None):
        self.layer, self.window = layer, window
        self.stateful = layer.layer_type == "jet"

    @property
    def fast_weight_module(self) -> nn.Module | None:
        return self.layer.self_attn if self.stateful else None  # the JetBlock, not the MLP

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext, step: int = 0) -> torch.Tensor:
        return self.layer(
            hidden_states,
            position_embeddings=ctx.position_embeddings,
            attention_mask=None if self.stateful else ctx.attention_bias(self.window),
            padding_mask=ctx.padding_mask,
            cache=ctx.cache,
        )


def _transformers_layer_window(config, index: int) -> int | None:
    """A transformers-family layer's own sliding window, if it has one."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if layer_types is not None:
        return window if layer_types[index] == "sliding_attention" else None
    return window if getattr(config, "use_sliding_window", True) else None


@dataclass(frozen=True)
class DefaultBlocks:
    """The fast-weight blocks a conversion inserts by default: `count` evenly spaced, or one after
    every `every`-th layer, of mixer `kind`; neither: none."""

    kind: str
    count: int | None = None
    every: int | None = None


class FamilyAdapter:
    """The Llama family (llama, qwen2, qwen3, mistral: transformers' own modeling); the other
    families override what differs."""

    name = "llama"
    default_blocks = DefaultBlocks("gdn", every=4)

    def default_loop_span(self, num_layers: int) -> tuple[int, int]:
        """The middle half of the layers."""
        quarter = num_layers // 4
        return (quarter, num_layers - quarter)

    def check_loop_span(self, span: tuple[int, int], num_layers: int) -> None:
        """Raises ValueError for a span this family cannot loop."""
        if not (0 <= span[0] < span[1] <= num_layers):
            raise ValueError(
                f"loop_span must satisfy 0 <= start < end <= {num_layers} (layers), got {list(span)}"
            )

    def layer_windows(self, config) -> list[int | None]:
        """Each layer's own attention window (None: full attention)."""
        return [_transformers_layer_window(config, i) for i in range(config.num_hidden_layers)]

    def block(self, layer: nn.Module, num_layers: int, window: int | None) -> StackBlock:
        return LlamaFamilyLayer(layer, window)

    def steps_per_pass(self, config) -> int:
        return 1

    def final_norm(self, inner: nn.Module) -> nn.Module | None:
        return inner.norm

    def step_norm(self, inner: nn.Module) -> nn.Module | None:
        return None

    def native_fast_weight_layers(self, config) -> list[int]:
        """Indices of the base's own layers that carry fast weights."""
        return []


class OuroAdapter(FamilyAdapter):
    name = "ouro"
    default_blocks = DefaultBlocks("jet", count=6)

    def default_loop_span(self, num_layers: int) -> tuple[int, int]:
        return (0, num_layers)  # Ouro loops its whole shared stack natively

    def check_loop_span(self, span: tuple[int, int], num_layers: int) -> None:
        super().check_loop_span(span, num_layers)
        if tuple(span) != (0, num_layers):
            raise ValueError(
                f"Ouro loops its whole shared stack; loop_span must be (0, {num_layers}), got {list(span)}"
            )

    def layer_windows(self, config) -> list[int | None]:
        return [config.sliding_window if kind == "sliding_attention" else None for kind in config.layer_types]

    def block(self, layer: nn.Module, num_layers: int, window: int | None) -> StackBlock:
        return OuroLayer(layer, num_layers, window)

    def steps_per_pass(self, config) -> int:
        return config.total_ut_steps

    def final_norm(self, inner: nn.Module) -> nn.Module | None:
        return None  # the step norm after the last step is Ouro's final norm

    def step_norm(self, inner: nn.Module) -> nn.Module | None:
        return inner.norm


class JetNemotronAdapter(FamilyAdapter):
    name = "jet_nemotron"
    default_blocks = DefaultBlocks("jet")

    def layer_windows(self, config) -> list[int | None]:
        return [config.swa_window_size() if kind == "swa" else None for kind in config.layer_types]

    def block(self, layer: nn.Module, num_layers: int, window: int | None) -> StackBlock:
        return JetNemotronLayer(layer, window)

    def native_fast_weight_layers(self, config) -> list[int]:
        return [i for i, kind in enumerate(getattr(config, "layer_types", None) or []) if kind == "jet"]


_ADAPTERS = {adapter.name: adapter for adapter in (FamilyAdapter(), OuroAdapter(), JetNemotronAdapter())}


def family_adapter(config_or_name) -> FamilyAdapter:
    """The adapter of a config's family (or of a family name).

    Raises:
        UnsupportedModelError (a ValueError): for a config of no supported family.
    """
    if isinstance(config_or_name, str):
        return _ADAPTERS[config_or_name]
    return _ADAPTERS[resolve_family(config_or_name).name]
