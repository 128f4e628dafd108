"""The explicit state a fast-weight layer carries from one call to the next.

Sleep needs the state to be a value, not hidden module attributes: the engine snapshots it at
a chunk start, restores it before consolidation and threads it through N passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class FastWeightState:
    """Recurrent state plus the conv states of one fast-weight layer, for a batch.

    recurrent: [B, H, K, V] for gated-delta layers, [B, H, P, N] for Mamba2; float32.
    conv: one tensor [B, D, W-1] per causal conv of the layer (the last W-1 conv inputs),
          in a fixed order defined by the layer (e.g. GatedDeltaNet: q, k, v).
    """

    recurrent: torch.Tensor
    conv: tuple[torch.Tensor, ...] = field(default_factory=tuple)

    @property
    def batch_size(self) -> int:
        return self.recurrent.shape[0]

    def clone(self) -> FastWeightState:
        return FastWeightState(self.recurrent.clone(), tuple(c.clone() for c in self.conv))

    def detach(self) -> FastWeightState:
        return FastWeightState(self.recurrent.detach(), tuple(c.detach() for c in self.conv))

    def to(self, *args, **kwargs) -> FastWeightState:
        return FastWeightState(
            self.recurrent.to(*args, **kwargs), tuple(c.to(*args, **kwargs) for c in self.conv)
        )

    def index_select(self, batch_index: torch.Tensor) -> FastWeightState:
        """Reorder or select batch rows (beam search, dropping finished sequences)."""
        return FastWeightState(
            self.recurrent.index_select(0, batch_index),
            tuple(c.index_select(0, batch_index) for c in self.conv),
        )

    def shapes(self) -> tuple[tuple[int, ...], ...]:
        return (tuple(self.recurrent.shape),) + tuple(tuple(c.shape) for c in self.conv)


def check_state(
    state: FastWeightState | None,
    *,
    batch_size: int,
    recurrent_shape: tuple[int, ...],
    conv_shapes: tuple[tuple[int, ...], ...],
    layer: str,
) -> None:
    """Raise a ValueError naming the expected shapes if `state` was made by another layer
    shape or for another batch size. Shapes exclude the batch dimension."""
    if state is None:
        return
    if not isinstance(state, FastWeightState):
        raise ValueError(f"state for {layer} must be a FastWeightState, got {type(state).__name__}")
    expected = ((batch_size, *recurrent_shape),) + tuple((batch_size, *s) for s in conv_shapes)
    if state.shapes() != expected:
        raise ValueError(
            f"state does not fit {layer}: expected recurrent+conv shapes {list(map(list, expected))}, "
            f"got {list(map(list, state.shapes()))} (a state from another layer shape or batch size?)"
        )
