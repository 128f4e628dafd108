"""Pure functions on tensors: the fast-weight math (torch everywhere, CUDA libraries on CUDA
tensors when they import; see backends.py)."""

from .conv import causal_conv1d, causal_conv1d_step, dynamic_causal_conv1d, dynamic_causal_conv1d_step
from .gated_delta_rule import chunk_gated_delta_rule, gated_delta_rule_step, recurrent_gated_delta_rule
from .ssd import ssd_chunk_scan, ssd_sequential_scan, ssd_step

__all__ = [
    "causal_conv1d",
    "causal_conv1d_step",
    "chunk_gated_delta_rule",
    "dynamic_causal_conv1d",
    "dynamic_causal_conv1d_step",
    "gated_delta_rule_step",
    "recurrent_gated_delta_rule",
    "ssd_chunk_scan",
    "ssd_sequential_scan",
    "ssd_step",
]
