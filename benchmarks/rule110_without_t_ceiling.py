"""The control behind the retraction in docs/results.md: how well can ANY predictor do on the
Rule 110 task when t is mixed over a set of values but not shown in the input?

    python benchmarks/rule110_without_t_ceiling.py --width 16 --steps 0 1 2 3 4

Given the strings (all a model can see without a t token), the labels of t are f_t(strings).
With t uniform over the set, the Bayes-optimal guess is, for exact match, a label vector
produced by the most t values (ties broken uniformly at random: the expected score is
reported), and per label the majority bit over the t values (ties count as a coin flip).
Scored against every t of the set on the test split. A model trained on such a mixture cannot
beat these numbers on average over the t; one trained with the t token announced can reach 1.0.
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from sleep_retrofit.tasks import build_dataset
from sleep_retrofit.tasks.rule110 import rule110_evolve


def ceiling(
    width: int, steps: list[int], num_strings: int, examples: int
) -> dict[int, tuple[float, list[float]]]:
    rows = list(build_dataset("rule110", "test", examples, width=width, num_strings=num_strings, steps=0))
    strings = np.array([row["strings"] for row in rows])  # [E, S, W]
    labels = {t: rule110_evolve(strings, t)[..., 0] for t in steps}  # [E, S] per t
    stacked = np.stack([labels[t] for t in steps], axis=1)  # [E, T, S]
    modes = []  # per example: the label vectors produced by the most t values
    for per_t in stacked:
        counts = Counter(map(tuple, per_t))
        top = max(counts.values())
        modes.append({vector for vector, count in counts.items() if count == top})
    share_of_ones = stacked.mean(axis=1)  # [E, S]
    result = {}
    for t in steps:
        exact = [float(tuple(gold) in mode) / len(mode) for gold, mode in zip(labels[t], modes, strict=True)]
        # P(majority guess right): 1 when the majority agrees with this t's label, 1/2 on a tie.
        agree = np.where(share_of_ones == 0.5, 0.5, ((share_of_ones > 0.5) == labels[t]).astype(float))
        result[t] = (float(np.mean(exact)), [float(v) for v in agree.mean(axis=0)])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-strings", type=int, default=4)
    parser.add_argument("--examples", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"W={args.width}, t mixed uniformly over {args.steps}, t not in the input, "
        f"{args.examples} test examples"
    )
    print("| t | best exact match | best per-label accuracy |")
    print("|---:|---:|---|")
    results = ceiling(args.width, args.steps, args.num_strings, args.examples)
    for t, (exact, per_label) in results.items():
        print(f"| {t} | {exact:.3f} | {' / '.join(f'{v:.2f}' for v in per_label)} |")
    mean = sum(exact for exact, _ in results.values()) / len(results)
    print(f"| mean | {mean:.3f} | |")


if __name__ == "__main__":
    main()
