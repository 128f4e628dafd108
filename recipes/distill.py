"""Retrofit by distillation from the base model, on plain text (docs/training.md, "Distillation"):

python recipes/distill.py --config recipes/configs/distill_tiny.yaml [key=value ...]
accelerate launch recipes/distill.py --config ...
"""

import sys

from sleep_retrofit.train import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("text"))
