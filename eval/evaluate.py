"""Evaluate a converted sleep-retrofit model across N values and task difficulties.

    python eval/evaluate.py --model DIR --task rule110 --passes 1 2 4 --steps 4 8 16 32
    python eval/evaluate.py --model DIR --task depo --hops 4 8 16 --passes 1 2 4
    python eval/evaluate.py --model DIR --task gsm_infinite --ops 2 4 6 8 --data gsm_infinite_medium_8k/

Writes results.json (one record per task x difficulty x N cell; rerunning skips the cells
already there), results.md and accuracy.png to --out. All options: --help; the library is
sleep_retrofit/evaluation.py, documented in docs/evaluation.md ("Evaluating a checkpoint").
"""

import sys

from sleep_retrofit.evaluation import main

if __name__ == "__main__":
    sys.exit(main())
