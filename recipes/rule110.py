"""Train a sleep model on rule110 (docs/training.md):

python recipes/rule110.py --config recipes/configs/<file>.yaml [key=value ...]
accelerate launch recipes/rule110.py --config ...
"""

import sys

from sleep_retrofit.train import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("rule110"))
