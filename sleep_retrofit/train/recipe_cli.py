"""The command line of the recipes: ``--config FILE`` plus dotted ``key=value`` overrides."""

from __future__ import annotations

import sys
from pathlib import Path

from ..arguments import OneLineParser
from .config import ConfigError, load_config
from .trainer import TrainingDiverged, train


def main(task: str, argv: list[str] | None = None) -> int:
    """Parse, validate (exit status 2 with a one-line message on bad input), train."""
    parser = OneLineParser(
        prog=f"recipes/{task}.py",
        description=f"Two-stage sleep training on {task} (Accelerate; see docs/training.md).",
    )
    parser.add_argument("--config", required=True, help="YAML config (recipes/configs/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. stage1.max_steps=20")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if config.data.task != task:
            raise ConfigError(f"this recipe trains {task}, but the config has data.task={config.data.task!r}")
        results = train(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return 0
    for result in results:
        state = "already done" if result.skipped else f"{result.steps} steps"
        print(f"{result.stage}: {state}, last loss {result.last_loss}")
    print(f"model: {Path(config.output_dir) / 'model'}")
    return 0
