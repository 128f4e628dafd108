"""Convert a model, load it with AutoModelForCausalLM, generate past the window, in a few seconds on a
CPU. With --adapter-only the checkpoint holds only the added blocks and refers to the base.

    python examples/convert_and_generate.py                       # a built-in tiny preset, no download
    python examples/convert_and_generate.py --model DIR_OR_HUB_ID --window 512 --passes 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sleep_retrofit  # noqa: F401  (registers the converted model type with the Auto classes)
from sleep_retrofit.convert import convert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-llama", help="a preset, a local directory or a Hub id")
    parser.add_argument("--window", type=int, default=16, help="L (default 16)")
    parser.add_argument("--passes", type=int, default=2, help="N (default 2)")
    parser.add_argument("--adapter-only", action="store_true", help="write only what the retrofit adds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        out = convert(
            args.model,
            Path(tmp) / "converted",
            window=args.window,
            passes=args.passes,
            adapter_only=args.adapter_only,
            progress=False,
        )
        print("files:", sorted(p.name for p in out.iterdir()))
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        prompt = "Before a chunk of context is evicted, the model sleeps on it. " * 3
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=8, do_sample=False)
        chunks = ids.shape[1] // args.window
        print(
            f"prompt: {ids.shape[1]} tokens = {chunks} chunk(s) of L={args.window}, "
            f"each slept on with N={args.passes}"
        )
        print("completion:", repr(tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
