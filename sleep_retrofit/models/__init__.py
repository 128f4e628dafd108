"""Native, checkpoint-compatible model families and the family registry.

Ouro and Jet-Nemotron are implemented here (transformers style, one file per family); the
Llama family (llama, qwen2, qwen3, mistral) is used through transformers' own classes.
"""

from .common import MLP, RMSNorm, RotaryEmbedding, SelfAttention, build_attention_masks
from .jet_nemotron import (
    JetNemotronCache,
    JetNemotronConfig,
    JetNemotronForCausalLM,
    JetNemotronModel,
)
from .loading import CheckpointMismatchError, StrictLoadingMixin, check_loading_info
from .ouro import OuroCache, OuroCausalLMOutput, OuroConfig, OuroForCausalLM, OuroModel
from .registry import (
    FAMILIES,
    ModelFamily,
    UnsupportedModelError,
    register_auto_classes,
    resolve_family,
    supported_model_types,
)

__all__ = [
    "FAMILIES",
    "MLP",
    "CheckpointMismatchError",
    "JetNemotronCache",
    "JetNemotronConfig",
    "JetNemotronForCausalLM",
    "JetNemotronModel",
    "ModelFamily",
    "OuroCache",
    "OuroCausalLMOutput",
    "OuroConfig",
    "OuroForCausalLM",
    "OuroModel",
    "RMSNorm",
    "RotaryEmbedding",
    "SelfAttention",
    "StrictLoadingMixin",
    "UnsupportedModelError",
    "build_attention_masks",
    "check_loading_info",
    "register_auto_classes",
    "resolve_family",
    "supported_model_types",
]
