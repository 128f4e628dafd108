"""The entries of a stack view: what every block call gets (PassContext), the block protocol
(StackBlock) and the inserted fast-weight block. Family-specific blocks are in families.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class PassContext:
    """What every block needs for one call over the same tokens.

    cache: the object attention layers call ``update(k, v, slot)`` on and fast-weight blocks
        read/write their state through (see ``SleepCache.wake_view`` / ``consolidation_view``).
    attention_bias: window (None = unbounded) -> [B, 1, Tq, Tk] additive bias, memoised.
    padding_mask: [B, T] 1/0 (1 = real token), or None when nothing is padded.
    The Ouro loop step being run is not part of it: the stack passes it to every block call.
    """

    position_embeddings: tuple[torch.Tensor, torch.Tensor]
    attention_bias: Callable[[int | None], torch.Tensor]
    padding_mask: torch.Tensor | None
    cache: object


class StackBlock:
    """One entry of the stack. `stateful` blocks carry fast-weight state across chunks."""

    stateful: bool = False

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext, step: int = 0) -> torch.Tensor:
        """Run the block; `step` is the Ouro loop step (0 for other families): it selects the
        per-step cache slots and states."""
        raise NotImplementedError

    @property
    def module(self) -> nn.Module:
        """The model's own module this entry runs."""
        return self.layer

    @property
    def fast_weight_module(self) -> nn.Module | None:
        """The module holding this entry's fast weights (None when it keeps no state)."""
        return self.layer if self.stateful else None


class InsertedBlock(StackBlock):
    """A fast-weight block inserted after base layer `after`; one state slot per Ouro step."""

    stateful = True

    def __init__(self, module: nn.Module, after: int):
        self.layer, self.after = module, after

    def __call__(self, hidden_states: torch.Tensor, ctx: PassContext, step: int = 0) -> torch.Tensor:
        key = f"inserted.{self.after}.step{step}"
        hidden_states, state = self.layer(
            hidden_states, state=ctx.cache.get_state(key), attention_mask=ctx.padding_mask
        )
        ctx.cache.set_state(key, state)
        return hidden_states
