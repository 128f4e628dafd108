"""The sleep mechanism: stack view (family adapters in families.py), SleepCache, chunk engine."""

from .blocks import PassContext, StackBlock
from .cache import SleepCache
from .engine import SleepEngine
from .families import FamilyAdapter, family_adapter
from .masks import attention_bias
from .settings import EVICTION_MODES, SleepSettings
from .stack import StackView, build_stack

__all__ = [
    "EVICTION_MODES",
    "FamilyAdapter",
    "PassContext",
    "SleepCache",
    "SleepEngine",
    "SleepSettings",
    "StackBlock",
    "StackView",
    "attention_bias",
    "build_stack",
    "family_adapter",
]
