"""What per-pass activation checkpointing saves when training under sleep.

One training forward + backward (Algorithm 1: context chunks consolidated N times, loss on the
last chunk) of the toy hybrid, with and without `model.activation_checkpointing_enable()`,
which recomputes each consolidation pass in backward. Reported per N:
- bytes of tensors autograd saves for backward (counted with saved_tensors_hooks: exact and
  independent of the allocator), with and without checkpointing;
- forward + backward wall time of each (the recomputation costs about one extra pass);
- that the gradients are identical.

    python benchmarks/bench_checkpointing.py [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import time

import torch
from bench_common import REPO, machine_info, progress, update_benchmarks_md

import sleep_retrofit  # noqa: F401  (registers the Auto classes)
from sleep_retrofit.toy import build_toy_hybrid


def measure(checkpoint: bool, passes: int, args) -> tuple[float, float, list[torch.Tensor]]:
    model = build_toy_hybrid(
        32, hidden_size=args.hidden, num_layers=4, passes=passes, window=args.window, seed=1
    )
    if checkpoint:
        model.activation_checkpointing_enable()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 32, (args.batch, args.window * args.chunks), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[:, -args.window :] = ids[:, -args.window :]
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    began = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(ids, labels=labels).loss
    loss.backward()
    seconds = time.perf_counter() - began
    return saved[0] / 2**20, seconds, [p.grad for p in model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    lines = [
        "| N | saved for backward, plain | with per-pass checkpointing | ratio "
        "| time plain | time checkpointed | gradients equal |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for passes in (1, 2, 4):
        plain_mb, plain_s, plain_grads = measure(False, passes, args)
        ckpt_mb, ckpt_s, ckpt_grads = measure(True, passes, args)
        equal = all(torch.equal(a, b) for a, b in zip(plain_grads, ckpt_grads, strict=True))
        progress(f"N={passes}: {plain_mb:.1f} MiB -> {ckpt_mb:.1f} MiB")
        lines.append(
            f"| {passes} | {plain_mb:.1f} MiB | {ckpt_mb:.1f} MiB | {plain_mb / ckpt_mb:.1f}x "
            f"| {plain_s:.2f} s | {ckpt_s:.2f} s | {'yes' if equal else 'NO'} |"
        )
    info = machine_info(args.threads)
    body = "\n".join(
        [
            f"Toy hybrid (attn -> GDN -> attn -> GDN, hidden {args.hidden}), batch {args.batch}, "
            f"{args.chunks} chunks of L={args.window}, hard eviction, loss on the last chunk; "
            "one forward + backward.",
            "",
            *(f"- {key}: {value}" for key, value in info.items()),
            "",
            *lines,
        ]
    )
    print(body)
    if not args.no_write:
        update_benchmarks_md(
            REPO / "BENCHMARKS.md",
            "bench_checkpointing",
            "Training memory: per-pass activation checkpointing",
            body,
            "python benchmarks/bench_checkpointing.py",
        )


if __name__ == "__main__":
    main()
