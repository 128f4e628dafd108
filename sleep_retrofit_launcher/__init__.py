"""The `sleep-retrofit` console script's entry point.

Importing the toolkit loads torch and transformers (seconds). The entry point lives outside the
`sleep_retrofit` package, whose import is that slow part, so that a Ctrl-C while it loads ends
like one during a command: one line and exit status 130, not a traceback and -2.
"""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from sleep_retrofit.cli import main as run_command
    except KeyboardInterrupt:
        print("sleep-retrofit: interrupted while starting; nothing was written", file=sys.stderr)
        return 130
    return run_command()
