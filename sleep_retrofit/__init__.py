"""sleep-retrofit: give pretrained Hugging Face language models sleep.

Before a chunk of context is evicted from the KV cache, the model runs N extra recurrent
passes over it and consolidates it into the fast-weight state of its SSM layers.
"""

__version__ = "0.1.0"
