"""A stack view of a supported model: embed -> prefix -> loop body -> suffix -> norm -> head.

Sleep repeats the loop body; everything else runs once. The family adapters below say where
each family keeps its layers, how one of its decoder layers is called, which layers carry
fast-weight state, and which span loops by default (design.md):

    Ouro           the whole shared stack, one body pass = total_ut_steps steps with the
                   model norm between steps (Ouro loops natively)
    Jet-Nemotron   the middle half of its layers (the paper loops 14 of 28)
    Llama family   the middle half of its layers

Inserted fast-weight blocks (modules with ``forward(h, state, attention_mask) -> (h, state)``)
go right after the base layer whose index keys them, and belong to that layer's segment.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.utils.checkpoint
from torch import nn

from ..models.registry import resolve_family
from .cache import ConsolidationView


@dataclass
class PassContext:
    """What every block needs for one call over the same tokens.

    cache: the object attention layers call ``update(k, v, slot)`` on and fast-weight blocks
        read/write their state through (see ``SleepCache.wake_view`` / ``consolidation_view``).
    attention_bias: window (None = unbounded) -> [B, 1, Tq, Tk] additive bias, memoised.
    padding_mask: [B, T] 1/0 (1 = real token), or None when nothing is padded.
    step: the Ouro loop step being run (0 for other families); selects per-step cache slots.
    """

    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_bias: Callable[[int | None], torch.Tensor]
    padding_mask: torch.Tensor | None
    cache: object
    step: int = 0


class StackBlock:
    """One entry of the stack. `stateful` blocks carry fast-weight state across chunks."""

    stateful: bool = False

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        raise NotImplementedError

    @property
    def module(self) -> nn.Module:
        """The model's own module this entry runs."""
        return self.layer


class InsertedBlock(StackBlock):
    """A fast-weight block inserted after base layer `after`; one state slot per Ouro step."""

    stateful = True

    def __init__(self, module: nn.Module, after: int):
        self.layer, self.after = module, after

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        key = f"inserted.{self.after}.step{ctx.step}"
        hidden_states, state = self.layer(
            hidden_states, state=ctx.cache.get_state(key), attention_mask=ctx.padding_mask
        )
        ctx.cache.set_state(key, state)
        return hidden_states


class LlamaFamilyLayer(StackBlock):
    """A transformers decoder layer (Llama, Qwen2, Qwen3, Mistral): its attention calls
    ``cache.update(k, v, layer_idx)``."""

    def __init__(self, layer: nn.Module, window: int | None):
        self.layer, self.window = layer, window

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
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

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        return self.layer(
            hidden_states,
            position_embeddings=ctx.position_embeddings,
            attention_mask=ctx.attention_bias(self.window),
            cache=ctx.cache,
            cache_layer_idx=ctx.step * self.num_layers + self.layer.layer_idx,
        )


class JetNemotronLayer(StackBlock):
    """A Jet-Nemotron layer: "jet" layers keep a FastWeightState (``cache.get_jet_state``)."""

    def __init__(self, layer: nn.Module, window: int | None):
        self.layer, self.window = layer, window
        self.stateful = layer.layer_type == "jet"

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        return self.layer(
            hidden_states,
            position_embeddings=ctx.position_embeddings,
            attention_mask=None if self.stateful else ctx.attention_bias(self.window),
            padding_mask=ctx.padding_mask,
            cache=ctx.cache,
        )


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

    def modules(self) -> list[nn.Module]:
        """Every module sleep runs (their parameters are the ones a sleep forward can train)."""
        ends = [self.embed, self.rotary, self.final_norm, self.head, self.step_norm]
        blocks = [block.module for block in self.prefix + self.body + self.suffix]
        return [module for module in ends + blocks if module is not None]

    def _run(self, blocks: list[StackBlock], hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        for block in blocks:
            hidden_states = block(hidden_states, ctx)
        return hidden_states

    def body_pass(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        """One pass of the loop body (Ouro: all its steps, the model norm after each)."""
        for step in range(self.steps_per_pass):
            ctx.step = step
            hidden_states = self._run(self.body, hidden_states, ctx)
            if self.step_norm is not None:
                hidden_states = self.step_norm(hidden_states)
        ctx.step = 0
        return hidden_states

    def wake(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        """One ordinary pass: the final hidden states the head reads."""
        hidden_states = self._run(self.prefix, hidden_states, ctx)
        hidden_states = self.body_pass(hidden_states, ctx)
        hidden_states = self._run(self.suffix, hidden_states, ctx)
        return self.final_norm(hidden_states) if self.final_norm is not None else hidden_states

    def consolidate(
        self, hidden_states: torch.Tensor, ctx: PassContext, passes: int, checkpoint_passes: bool = False
    ) -> None:
        """Sleep on a chunk: prefix once, body `passes` times (pass k+1 reads pass k's output and
        the state pass k left), suffix once. The refined hidden states are discarded; the
        suffix runs only as far as its last stateful block, since nothing else is kept.

        checkpoint_passes: keep no activations of a body pass for backward, recompute them
        (memory per pass instead of per pass x N; about one extra pass of compute)."""
        hidden_states = self._run(self.prefix, hidden_states, ctx)
        for _ in range(passes):
            if checkpoint_passes and torch.is_grad_enabled():
                hidden_states = self._checkpointed_body_pass(hidden_states, ctx)
            else:
                hidden_states = self.body_pass(hidden_states, ctx)
        last = max((i for i, b in enumerate(self.suffix) if b.stateful), default=-1)
        self._run(self.suffix[: last + 1], hidden_states, ctx)

    def _checkpointed_body_pass(self, hidden_states: torch.Tensor, ctx: PassContext) -> torch.Tensor:
        # The recomputation in backward must see this pass's input states, which later passes
        # overwrite in the cache: the pass runs on a private copy of the states it starts from
        # and hands its new states back as outputs. (Consolidation stores no keys/values.)
        def run(hidden: torch.Tensor, inputs: dict) -> tuple[torch.Tensor, dict]:
            view = ConsolidationView(dict(inputs))
            hidden = self.body_pass(hidden, replace(ctx, cache=view))
            return hidden, view.states

        hidden_states, states = torch.utils.checkpoint.checkpoint(
            run, hidden_states, dict(ctx.cache.states), use_reentrant=False
        )
        ctx.cache.states.update(states)
        return hidden_states

    @property
    def has_fast_weights(self) -> bool:
        return any(b.stateful for b in self.prefix + self.body + self.suffix)


def default_loop_span(family: str, num_layers: int) -> tuple[int, int]:
    """Ouro loops everything; other families loop their middle half."""
    if family == "ouro":
        return (0, num_layers)
    quarter = num_layers // 4
    return (quarter, num_layers - quarter)


def _layer_window(config, index: int) -> int | None:
    """A transformers-family layer's own sliding window, if it has one."""
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    if layer_types is not None:
        return window if layer_types[index] == "sliding_attention" else None
    return window if getattr(config, "use_sliding_window", True) else None


def build_stack(
    base_model: nn.Module,
    inserted: Mapping[int, nn.Module] | None = None,
    loop_span: tuple[int, int] | None = None,
) -> StackView:
    """The stack view of `base_model` (a ...ForCausalLM of a supported family) with the
    fast-weight blocks `inserted` (base layer index -> module) placed after their layers."""
    config = base_model.config
    family = resolve_family(config).name
    inner = base_model.model
    layers = list(inner.layers)
    num_layers = len(layers)
    inserted = dict(inserted or {})

    span = tuple(loop_span) if loop_span is not None else default_loop_span(family, num_layers)
    if not (0 <= span[0] < span[1] <= num_layers):
        raise ValueError(
            f"loop_span must satisfy 0 <= start < end <= {num_layers} (layers), got {list(span)}"
        )
    if family == "ouro" and span != (0, num_layers):
        raise ValueError(
            f"Ouro loops its whole shared stack; loop_span must be (0, {num_layers}), got {list(span)}"
        )
    for index in inserted:
        if not 0 <= index < num_layers:
            raise ValueError(
                f"inserted block after layer {index} is outside the layer range 0..{num_layers - 1}"
            )

    if family == "ouro":
        windows = [
            config.sliding_window if config.layer_types[i] == "sliding_attention" else None
            for i in range(num_layers)
        ]
        blocks: list[StackBlock] = [
            OuroLayer(layer, num_layers, windows[i]) for i, layer in enumerate(layers)
        ]
    elif family == "jet_nemotron":
        windows = [config.swa_window_size() if t == "swa" else None for t in config.layer_types]
        blocks = [JetNemotronLayer(layer, windows[i]) for i, layer in enumerate(layers)]
    else:
        windows = [_layer_window(config, i) for i in range(num_layers)]
        blocks = [LlamaFamilyLayer(layer, windows[i]) for i, layer in enumerate(layers)]

    segments: tuple[list[StackBlock], list[StackBlock], list[StackBlock]] = ([], [], [])
    for index, block in enumerate(blocks):
        segment = 0 if index < span[0] else (1 if index < span[1] else 2)
        segments[segment].append(block)
        if index in inserted:
            segments[segment].append(InsertedBlock(inserted[index], index))

    return StackView(
        family=family,
        embed=inner.embed_tokens,
        rotary=inner.rotary_emb,
        prefix=segments[0],
        body=segments[1],
        suffix=segments[2],
        final_norm=None if family == "ouro" else inner.norm,
        head=base_model.lm_head,
        loop_span=span,
        num_layers=num_layers,
        steps_per_pass=config.total_ut_steps if family == "ouro" else 1,
        step_norm=inner.norm if family == "ouro" else None,
        windows=set(windows),
    )
