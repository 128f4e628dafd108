"""Fast-weight layers: nn.Modules that own parameters, named like upstream so checkpoints load.

Contract: forward(x, state=None, attention_mask=None) -> (y, new_state), state a FastWeightState.
"""

from .state import FastWeightState, check_state

__all__ = ["FastWeightState", "check_state"]
