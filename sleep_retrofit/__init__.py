"""sleep-retrofit: give pretrained Hugging Face language models sleep.

Before a chunk of context is evicted from the KV cache, the model runs N extra recurrent
passes over it and consolidates it into the fast-weight state of its SSM layers.

Importing the package registers the native families (Ouro, Jet-Nemotron) and converted
checkpoints (model_type "sleep_retrofit") with transformers' Auto classes, so
AutoModelForCausalLM.from_pretrained(dir) loads them without trust_remote_code.
"""

from .modeling import register as _register_sleep_retrofit
from .models.registry import register_auto_classes as _register_auto_classes

__version__ = "0.1.0"

_register_auto_classes()
_register_sleep_retrofit()
