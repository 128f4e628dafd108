"""LoRA on a converted model with PEFT: load it through AutoModelForCausalLM, put adapters on the
base's projections (not inside the fast-weight blocks, which train fully), train a few steps
under sleep, save the adapter and load it back. A few seconds on a CPU.

    python examples/peft_lora.py                      # a built-in tiny preset, no download
    python examples/peft_lora.py --model DIR_OR_HUB_ID --window 512 --passes 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

import sleep_retrofit  # noqa: F401  (registers the converted model type with the Auto classes)
from sleep_retrofit.convert import convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="a preset, a local directory or a Hub id")
    parser.add_argument("--window", type=int, default=16, help="L (default 16)")
    parser.add_argument("--passes", type=int, default=2, help="N (default 2)")
    parser.add_argument("--steps", type=int, default=5, help="training steps (default 5)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        converted = convert(args.model, Path(tmp) / "converted", window=args.window, passes=args.passes)
        model = AutoModelForCausalLM.from_pretrained(converted)
        lora = LoraConfig(
            r=8,
            target_modules=["q_proj", "v_proj"],
            # The inserted GatedDeltaNet has q_proj / v_proj too: keep the adapters out of it...
            exclude_modules=model.lora_exclude_modules(),
            # ...and train the fast-weight blocks themselves in full.
            modules_to_save=[prefix.rstrip(".") for prefix in model.fast_weight_prefixes()],
        )
        model = get_peft_model(model, lora)
        trainable, total = model.get_nb_trainable_parameters()
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.1f}%)")

        # Four windows of text per row: chunks are consolidated with N passes and evicted, and the
        # gradients reach the fast-weight blocks through every pass.
        ids = torch.randint(3, model.config.vocab_size, (2, 4 * args.window))
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        model.train()
        for step in range(args.steps):
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            print(f"step {step}: loss {loss.item():.4f}")

        model.eval()
        with torch.no_grad():
            trained = model(input_ids=ids).logits
        model.save_pretrained(Path(tmp) / "adapter")  # only the adapters and the blocks
        print("adapter files:", sorted(p.name for p in (Path(tmp) / "adapter").iterdir()))

        reloaded = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(converted), Path(tmp) / "adapter"
        ).eval()
        with torch.no_grad():
            difference = (reloaded(input_ids=ids).logits - trained).abs().max().item()
        print(f"reloaded adapter, max |logit difference|: {difference:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
