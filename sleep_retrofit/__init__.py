"""sleep-retrofit: give pretrained Hugging Face language models sleep.

Before a chunk of context is evicted from the KV cache, the model runs N extra recurrent
passes over it and consolidates it into the fast-weight state of its SSM layers.
"""

__version__ = "0.1.0"

# Register the native model families (Ouro, Jet-Nemotron) with transformers' Auto classes, so
# AutoModelForCausalLM.from_pretrained(dir) loads them without trust_remote_code.
from .models.registry import register_auto_classes as _register_auto_classes

_register_auto_classes()

# ... and the converted checkpoints (model_type "sleep_retrofit").
from .modeling import register as _register_sleep_retrofit

_register_sleep_retrofit()
