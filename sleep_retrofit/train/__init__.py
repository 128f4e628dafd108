"""Two-stage sleep training on Accelerate (docs/training.md).

- `config`: the YAML schema (`TrainConfig`), `load_config(path, overrides)`.
- `optim`: Muon for hidden 2-D matrices + AdamW for the rest, warmup + cosine.
- `trainer`: `train(config)` runs stage 1 (fast weights only, hard eviction) then stage 2.
- `recipe_main`: the command line shared by recipes/*.py.
"""

from .config import ConfigError, TrainConfig, load_config
from .objectives import distillation_loss, training_loss
from .optim import build_optimizers, cosine_schedule, split_parameters
from .trainer import StageResult, TrainingDiverged, find_checkpoints, run_stage, train

__all__ = [
    "ConfigError",
    "StageResult",
    "TrainConfig",
    "TrainingDiverged",
    "build_optimizers",
    "cosine_schedule",
    "distillation_loss",
    "find_checkpoints",
    "load_config",
    "recipe_main",
    "run_stage",
    "split_parameters",
    "train",
    "training_loss",
]


def recipe_main(task: str, argv: list[str] | None = None) -> int:
    """`python recipes/<task>.py --config FILE [key=value ...]`: train and print where the model is."""
    from .recipe_cli import main

    return main(task, argv)
