"""Train a sleep model on gsm_infinite (docs/training.md):

python recipes/gsm_inf.py --config recipes/configs/<file>.yaml [key=value ...]
accelerate launch recipes/gsm_inf.py --config ...
"""

import sys

from sleep_retrofit.train import recipe_main

if __name__ == "__main__":
    sys.exit(recipe_main("gsm_infinite"))
