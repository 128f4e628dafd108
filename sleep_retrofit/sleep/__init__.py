"""The sleep mechanism, family-agnostic: stack view, SleepCache, chunk engine."""

from .cache import SleepCache
from .engine import SleepEngine
from .masks import attention_bias
from .settings import EVICTION_MODES, SleepSettings
from .stack import PassContext, StackBlock, StackView, build_stack, default_loop_span

__all__ = [
    "EVICTION_MODES",
    "PassContext",
    "SleepCache",
    "SleepEngine",
    "SleepSettings",
    "StackBlock",
    "StackView",
    "attention_bias",
    "build_stack",
    "default_loop_span",
]
