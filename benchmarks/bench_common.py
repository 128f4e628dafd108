"""What the benchmark scripts share: progress lines, the machine description at the top of each
report, and rewriting a script's own section of BENCHMARKS.md.

Imported as `from bench_common import ...`: the scripts run as `python benchmarks/<script>.py`,
which puts this directory on sys.path.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def progress(message: str) -> None:
    """One indented line on stderr, so that stdout holds only the report."""
    print(f"  {message}", file=sys.stderr, flush=True)


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (the platform's processor string without lscpu)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def load_average() -> str:
    """The 1-minute load average, "n/a" where the platform has none."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def machine_info(
    threads: int, *, threads_note: str = "torch.set_num_threads", versions: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The report's machine lines: CPU, cores, torch (and `versions`, e.g. transformers), Python,
    torch threads (with `threads_note`), the UTC date and the load average at the start."""
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        **(versions or {}),
        "python": platform.python_version(),
        "threads": f"{threads} ({threads_note})",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load average at start": load_average(),
    }


def section_markers(script: str) -> tuple[str, str]:
    """The HTML comments that delimit `script`'s section of BENCHMARKS.md (script: "bench_sleep")."""
    start = f"<!-- {script}:start (written by benchmarks/{script}.py; edits here are overwritten) -->"
    return start, f"<!-- {script}:end -->"


def update_benchmarks_md(path: Path, script: str, title: str, body: str, command: str) -> None:
    """Replace `script`'s section of BENCHMARKS.md at `path` (appended when it has none yet) with
    a "## title" heading, the command that produced it and `body`. The file is re-read now:
    other scripts write other sections."""
    start, end = section_markers(script)
    section = f"{start}\n## {title}\n\nCommand: `{command}`\n\n{body}{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
