"""Adaptive sleep against fixed N on trained Rule 110 models: accuracy per t and the passes each
consolidated chunk took (the ingestion cost in body passes; N = 1 costs 1).

    python benchmarks/adaptive_sleep.py MODEL_DIR [MODEL_DIR ...] [--tolerances 0.3 0.5 0.7]

MODEL_DIR: models of the reproduction (benchmarks/reproduce_rule110.py, `cpu` profile: four
16-bit strings, t announced), e.g. runs/r110_cpu/jobs/sleep_N4_seed0/train/stage2/model. Every
model is evaluated with the evaluation grid at fixed N = 1, 2, 3, 4 and with each tolerance
(cap N = 4), on the same held-out examples. Prints a markdown table (docs/sessions.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sleep_retrofit.evaluation import EvalSpec, run_grid

TASK = {"rule110": {"width": 16, "num_strings": 4, "announce_steps": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--steps", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--examples", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(1)
    arms = [(f"N={n}", n, 0.0) for n in (1, 2, 3, 4)] + [(f"tol {t}, N<=4", 4, t) for t in args.tolerances]
    results: dict[str, list[dict]] = {label: [] for label, _, _ in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for m, model in enumerate(args.models):
            for label, passes, tolerance in arms:
                began = time.perf_counter()
                spec = EvalSpec(model=model, tasks=("rule110",), passes=(passes,), steps=tuple(args.steps),
                                num_examples=args.examples, batch_size=100, out=Path(tmp) / f"{m}-{label}",
                                tolerance=tolerance, task_options=TASK, progress=False)  # fmt: skip
                records = run_grid(spec).records
                seconds = time.perf_counter() - began
                results[label].append({r["difficulty"]: r for r in records} | {"seconds": seconds})
                print(f"  {Path(model).parts[-4] if len(Path(model).parts) > 3 else model} {label}: "
                      f"{[round(r['accuracy'], 3) for r in records]} passes "
                      f"{records[0].get('mean_passes')} {seconds:.0f} s", flush=True)  # fmt: skip
    header = "| arm | " + " | ".join(f"t={t}" for t in args.steps) + " | passes per chunk | eval wall, s |"
    lines = [header, "|---" * (len(args.steps) + 3) + "|"]
    for label, _, _ in arms:
        runs = results[label]
        cells = []
        for t in args.steps:
            values = [run[t]["accuracy"] for run in runs]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        passes = statistics.mean(statistics.mean(run[t]["mean_passes"] for t in args.steps) for run in runs)
        wall = statistics.mean(run["seconds"] for run in runs)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {passes:.2f} | {wall:.0f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
