"""The paper's two-stage warm-up on a base model, through the toolkit's trainer, in about a
minute on a CPU: stage 1 trains only the inserted fast-weight blocks with hard eviction, stage 2
fine-tunes with sliding-window sleep (LoRA here; `--finetune full` for everything).

    python examples/train_two_stages.py                        # the built-in tiny Llama, Rule 110
    python examples/train_two_stages.py --model DIR --out runs/mine --steps 200

The same run from YAML: `accelerate launch recipes/rule110.py --config recipes/configs/rule110_tiny.yaml`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

import sleep_retrofit  # noqa: F401  (registers the converted model type with the Auto classes)
from sleep_retrofit.adapters import load_referenced_base
from sleep_retrofit.train import train
from sleep_retrofit.train.config import config_from_dict


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(directory.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="the base: a preset, a directory or a Hub id")
    parser.add_argument("--out", default="runs/example_two_stages", help="output directory")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per stage (default 20)")
    parser.add_argument("--window", type=int, default=8, help="L (default 8)")
    parser.add_argument("--passes", type=int, default=2, help="N (default 2)")
    parser.add_argument("--finetune", choices=["lora", "full"], default="lora", help="stage 2 (default lora)")
    args = parser.parse_args(argv)
    config = config_from_dict(
        {
            "output_dir": args.out,
            "stages": ["stage1", "stage2"],
            "batch_size": 8,
            "model": {"source": args.model, "window": args.window, "passes": args.passes},
            # Two strings of 6 cells, each in a window of its own: the first is evicted before the
            # question and reaches the answer only through the fast-weight state.
            "data": {
                "task": "rule110",
                "train_examples": 8 * args.steps,
                "eval_examples": 16,
                "options": {"width": 6, "num_strings": 2, "steps": 1},
            },
            "stage1": {"max_steps": args.steps, "optimizer": "adamw", "adamw_lr": 3e-3},
            "stage2": {
                "max_steps": args.steps,
                "eviction": "sliding",
                "finetune": args.finetune,
                "optimizer": "adamw",
                "adamw_lr": 1e-3,
                "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]},
            },
        }
    )
    results = train(config)
    for result in results:
        print(f"{result.stage}: {result.steps} steps, last training loss {result.last_loss:.4f}")

    # Stage 1 may change only the fast-weight blocks; stage 2 also the base (LoRA, merged).
    out = Path(args.out)
    base = {f"base.{k}": v for k, v in load_referenced_base(args.model).state_dict().items()}
    for stage in ("stage1", "stage2"):
        trained = weights(out / stage / "model")
        changed = [k for k in base if not torch.equal(trained[k], base[k].to(trained[k].dtype))]
        print(f"{stage} changed {len(changed)} of the base's {len(base)} tensors")
    print(f"the trained model: {out / 'model'}  (AutoModelForCausalLM.from_pretrained loads it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
