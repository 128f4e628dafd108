"""A stack view of a supported model: embed -> prefix -> loop body -> suffix -> norm -> head.

Sleep repeats the loop body; everything else runs once. What differs per family (where its layers
live, how one is called, windows, the default loop span, Ouro's steps per pass) comes from its
adapter in families.py.

Inserted fast-weight blocks (modules with ``forward(h, state, attention_mask) -> (h, state)``)
go right after the base layer whose index keys them, and belong to that layer's segment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .blocks import InsertedBlock, PassContext, StackBlock
from .families import family_adapter


@dataclass
class StackView:
    """The model as sleep sees it. Modules are the base model's own (no copies)."""

    family: str
    embed: nn.Module
    rotary: nn.Module
    prefix: list[StackBlock]
    body: list[StackBlock]
    suffix: list[StackBlock]
    final_norm: nn.Module | None
    head: nn.Module
    loop_span: tuple[int, int]
    num_layers: int
    steps_per_pass: int = 1
    step_norm: nn.Module | None = None
    windows: set[int | None] = field(default_factory=set)

    def fast_weight_modules(self) -> list[nn.Module]:
        """The modules holding fast-weight state: inserted blocks and the base's own (JetBlocks)."""
        blocks = self.prefix + self.body + self.suffix
        return [block.fast_weight_module for block in blocks if block.fast_weight_module is not None]

    def modules(self) -> list[nn.Module]:
        """Every module sleep runs (their parameters are the ones a sleep forward can train)."""
        ends = [self.embed, self.rotary, self.final_norm, self.head, self.step_norm]
        blocks = [block.module for block in self.prefix + self.body + self.suffix]
        return [module for module in ends + blocks if module is not None]

    def run(
        self, blocks: list[StackBlock], hidden_states: torch.Tensor, ctx: PassContext, step: int = 0
    ) -> torch.Tensor:
        for block in blocks:
            hidden_states = block(hidden_states, ctx, step)
        return hidden_states

    def body_pass(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        """One pass of the loop body (Ouro: all its steps, the model norm after each)."""
        for step in range(self.steps_per_pass):
            hidden_states = self.run(self.body, hidden_states, ctx, step)
            if self.step_norm is not None:
                hidden_states = self.step_norm(hidden_states)
        return hidden_states

    def wake(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        """One ordinary pass: the final hidden states the head reads."""
        hidden_states = self.run(self.prefix, hidden_states, ctx)
        hidden_states = self.body_pass(hidden_states, ctx)
        hidden_states = self.run(self.suffix, hidden_states, ctx)
        return self.final_norm(hidden_states) if self.final_norm is not None else hidden_states

    @property
    def stateful_suffix(self) -> list[StackBlock]:
        """The suffix up to its last stateful block: all of it that consolidation must run
        (nothing after that block keeps anything)."""
        last = max((i for i, block in enumerate(self.suffix) if block.stateful), default=-1)
        return self.suffix[: last + 1]

    @property
    def has_fast_weights(self) -> bool:
        return any(b.stateful for b in self.prefix + self.body + self.suffix)


def build_stack(
    base_model: nn.Module,
    inserted: Mapping[int, nn.Module] | None = None,
    loop_span: tuple[int, int] | None = None,
) -> StackView:
    """The stack view of `base_model` (a ...ForCausalLM of a supported family) with the
    fast-weight blocks `inserted` (base layer index -> module) placed after their layers."""
    config = base_model.config
    adapter = family_adapter(config)
    inner = base_model.model
    layers = list(inner.layers)
    num_layers = len(layers)
    inserted = dict(inserted or {})

    span = tuple(loop_span) if loop_span is not None else adapter.default_loop_span(num_layers)
    adapter.check_loop_span(span, num_layers)
    for index in inserted:
        if not 0 <= index < num_layers:
            raise ValueError(
                f"inserted block after layer {index} is outside the layer range 0..{num_layers - 1}"
            )

    windows = adapter.layer_windows(config)
    segments: tuple[list[StackBlock], list[StackBlock], list[StackBlock]] = ([], [], [])
    for index, layer in enumerate(layers):
        segment = 0 if index < span[0] else (1 if index < span[1] else 2)
        segments[segment].append(adapter.block(layer, num_layers, windows[index]))
        if index in inserted:
            segments[segment].append(InsertedBlock(inserted[index], index))

    return StackView(
        family=adapter.name,
        embed=inner.embed_tokens,
        rotary=inner.rotary_emb,
        prefix=segments[0],
        body=segments[1],
        suffix=segments[2],
        final_norm=adapter.final_norm(inner),
        head=base_model.lm_head,
        loop_span=span,
        num_layers=num_layers,
        steps_per_pass=adapter.steps_per_pass(config),
        step_norm=adapter.step_norm(inner),
        windows=set(windows),
    )
