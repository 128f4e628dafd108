"""The grid's report: the markdown tables (one per task, N across, difficulty down) and the plot."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..tasks.gsm_infinite.scoring import leaderboard_score
from .spec import DIFFICULTY_NAMES

__all__ = ["markdown_report", "plot_results"]

_HEADLINE: dict[str, str] = {"rule110": "exact match", "depo": "accuracy", "gsm_infinite": "accuracy"}


def _format(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def markdown_report(records: Sequence[Mapping[str, Any]], title: str = "Evaluation") -> str:
    """One table per task and metric: difficulty rows, one column per N."""
    lines = [f"# {title}", ""]
    for task in dict.fromkeys(r["task"] for r in records):
        task_records = [r for r in records if r["task"] == task]
        first = task_records[0]["setting"]
        passes = sorted({r["passes"] for r in task_records})
        difficulties = list(dict.fromkeys(r["difficulty"] for r in task_records))
        by_cell = {(r["difficulty"], r["passes"]): r for r in task_records}
        axis = DIFFICULTY_NAMES[task]
        lines += [
            f"## {task}",
            "",
            f"window L = {first['window']}, {first['eviction']} eviction, up to {first['max_examples']} "
            f"test examples per cell (seed {first['seed']}).",
            "",
        ]
        headline = _HEADLINE[task]
        if task == "rule110":
            headline += f" (chance {task_records[0]['chance_exact_match']:.4g})"
        metrics = [("accuracy", headline)]
        if task == "rule110":
            metrics.append(("mean_per_label_accuracy", "mean per-label accuracy"))
        if task in ("rule110", "depo"):
            metrics.append(("loss", "loss per target token"))
        for key, label in metrics:
            lines += [
                f"**{label}**",
                "",
                f"| {axis} | " + " | ".join(f"N={n}" for n in passes) + " |",
                "|---:|" + "---:|" * len(passes),
            ]
            for d in difficulties:
                cells = [by_cell.get((d, n), {}).get(key) for n in passes]
                lines.append(f"| {d} | " + " | ".join(_format(v) for v in cells) + " |")
            lines.append("")
        if task == "rule110":
            lines += [
                "**per-string accuracy** (string 0 = the oldest)",
                "",
                f"| {axis} | " + " | ".join(f"N={n}" for n in passes) + " |",
                "|---:|" + "---:|" * len(passes),
            ]
            for d in difficulties:
                cells = [by_cell.get((d, n), {}).get("per_label_accuracy") for n in passes]
                text = ["–" if c is None else " / ".join(f"{v:.2f}" for v in c) for c in cells]
                lines.append(f"| {d} | " + " | ".join(text) + " |")
            lines.append("")
        if task == "gsm_infinite":
            scores = []
            for n in passes:
                accuracies = {d: by_cell[(d, n)]["accuracy"] for d in difficulties if (d, n) in by_cell}
                scores.append(leaderboard_score(accuracies))
            lines += [
                "**leaderboard score** (sum of accuracies over these op counts >= 2 until one is below 5%)",
                "",
                "| | " + " | ".join(f"N={n}" for n in passes) + " |",
                "|---|" + "---:|" * len(passes),
                "| score | " + " | ".join(f"{s:.3f}" for s in scores) + " |",
                "",
            ]
    return "\n".join(lines)


def plot_results(records: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path | None:
    """Accuracy against difficulty, one line per N, one panel per task (PNG); None when there
    is nothing to plot."""
    from matplotlib.figure import Figure  # imported here: the rest of the package never needs it

    tasks = list(dict.fromkeys(r["task"] for r in records))
    if not tasks:
        return None
    figure = Figure(figsize=(4.5 * len(tasks), 3.6), layout="constrained")
    axes = figure.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        task_records = [r for r in records if r["task"] == task]
        for n in sorted({r["passes"] for r in task_records}):
            points = sorted((r["difficulty"], r["accuracy"]) for r in task_records if r["passes"] == n)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"N={n}")
        if task == "rule110":
            ax.axhline(task_records[0]["chance_exact_match"], color="grey", linestyle=":", label="chance")
        ax.set_xticks(sorted({r["difficulty"] for r in task_records}))
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(DIFFICULTY_NAMES[task])
        ax.set_ylabel(_HEADLINE[task])
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
