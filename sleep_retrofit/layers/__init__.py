"""Fast-weight layers: nn.Modules that own parameters, named like upstream so checkpoints load.

Contract: forward(x, state=None, attention_mask=None) -> (y, new_state), state a FastWeightState.
"""

from .gated_deltanet import GatedDeltaNet
from .jet_block import JetBlock
from .mamba2 import Mamba2
from .state import FastWeightState, check_state

__all__ = ["FastWeightState", "GatedDeltaNet", "JetBlock", "Mamba2", "check_state"]
