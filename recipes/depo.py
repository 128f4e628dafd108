"""Train a sleep model on depo (docs/training.md):

python recipes/depo.py --config recipes/configs/<file>.yaml [key=value ...]
accelerate launch recipes/depo.py --config ...
"""

import sys

from sleep_retrofit.train import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("depo"))
