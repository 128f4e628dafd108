"""Training-step cost of the Rule 110 reproduction (benchmarks/reproduce_rule110.py, CPU profile).

1. The gated delta rule on one sleep chunk (T = L = 16 tokens, forward + backward): the chunked
   kernel with the chunk at the sequence's own length (what it does now) against the same
   sequence padded to the default chunk of 64 (what it did before: ~4x the intra-chunk work).
2. The GDN block's short causal conv on one sleep chunk (forward + backward): the toolkit's
   shifted multiply-adds (what it does now) against a depthwise F.conv1d (what it did before).
3. One optimiser step (forward + backward + AdamW) of the toy hybrid at the CPU profile's sizes
   (d = 64, batch 128, four 16-bit strings, T = 69, hard eviction) for N = 1, 2, 3, and of the
   compute-matched wide N = 1 model (54 GDN heads). Per-step time against N = 1 measured in the
   same run: it is what a job's wall time is made of.

    python benchmarks/bench_train_step.py [--threads 1] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from bench_common import REPO, machine_info, progress, update_benchmarks_md
from reproduce_rule110 import PROFILES, build_wide_toy, flop_matched_gdn_heads

import sleep_retrofit.kernels.gated_delta_rule as gdr
from sleep_retrofit.kernels import causal_conv1d
from sleep_retrofit.tasks import task_tokenizer


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def kernel_rows(repeats: int) -> list[str]:
    B, T, H, K = 128, 16, 4, 16
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, K, generator=generator, requires_grad=True) for _ in range(3))
    g = (-torch.rand(B, T, H, generator=generator)).requires_grad_()
    beta = torch.rand(B, T, H, generator=generator).requires_grad_()
    state = torch.zeros(B, H, K, K)

    def run(chunk_size: int):
        def step():
            o, final = gdr._chunk_torch(q, k, v, g, beta, state, K**-0.5, chunk_size)
            (o.sum() + final.sum()).backward()

        return step

    own = median_seconds(run(T), repeats)
    padded = median_seconds(run(64), repeats)
    return [
        "| chunk | forward + backward | vs own length |",
        "|---|---:|---:|",
        f"| own length ({T}) | {own * 1e3:.1f} ms | 1.00x |",
        f"| padded to 64 (before) | {padded * 1e3:.1f} ms | {padded / own:.2f}x |",
    ]


def conv_rows(repeats: int) -> list[str]:
    B, T, D, W = 128, 17, 128, 4
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=generator, requires_grad=True)
    weight = torch.randn(D, W, generator=generator, requires_grad=True)

    def shifted():
        y, _ = causal_conv1d(x, weight, activation="silu")
        y.square().sum().backward()

    def depthwise():  # the previous torch path: channels first, left-padded, grouped conv
        padded = F.pad(x.transpose(1, 2), (W - 1, 0))
        y = F.silu(F.conv1d(padded, weight.unsqueeze(1), groups=D)).transpose(1, 2)
        y.square().sum().backward()

    now = median_seconds(shifted, repeats)
    before = median_seconds(depthwise, repeats)
    return [
        "| torch path | forward + backward | vs now |",
        "|---|---:|---:|",
        f"| shifted multiply-adds (now) | {now * 1e3:.2f} ms | 1.00x |",
        f"| depthwise F.conv1d (before) | {before * 1e3:.2f} ms | {before / now:.2f}x |",
    ]


def step_rows(repeats: int) -> list[str]:
    profile = PROFILES["cpu"]
    tokenizer = task_tokenizer("rule110", width=profile.width, num_strings=profile.num_strings)
    batch, length = profile.batch_size, profile.tokens_per_example
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(2, len(tokenizer), (batch, length), generator=generator)
    labels = torch.full_like(ids, -100)
    labels[:, -profile.num_strings :] = ids[:, -profile.num_strings :]
    wide_heads = flop_matched_gdn_heads(profile, 3)

    runs = [(f"N={n}", n, profile.num_heads) for n in (1, 2, 3)]
    runs.append((f"N=1 wide ({wide_heads} GDN heads)", 1, wide_heads))
    rows = ["| model | s / step | vs N=1 | parameters |", "|---|---:|---:|---:|"]
    base = None
    for label, passes, heads in runs:
        model = build_wide_toy(profile, len(tokenizer), heads, passes=passes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=profile.adamw_lr)

        def step(model=model, optimizer=optimizer):
            model(input_ids=ids, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        seconds = median_seconds(step, repeats)
        base = base or seconds
        progress(f"{label}: {seconds:.2f} s/step")
        parameters = sum(p.numel() for p in model.parameters())
        rows.append(f"| {label} | {seconds:.2f} | {seconds / base:.2f}x | {parameters:,} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads)
    kernel = kernel_rows(args.repeats * 4)
    conv = conv_rows(args.repeats * 4)
    steps = step_rows(args.repeats)
    body = "\n".join(
        [
            *(f"- {key}: {value}" for key, value in info.items()),
            "",
            "### Gated delta rule on one sleep chunk (B=128, T=16, H=4, K=V=16, fp32, median)",
            "",
            *kernel,
            "",
            "### Short causal conv on one sleep chunk (B=128, T=17, D=128, W=4, SiLU, fp32, median)",
            "",
            *conv,
            "",
            "### One training step of the toy hybrid (CPU profile sizes, AdamW, median)",
            "",
            *steps,
            "",
        ]
    )
    print(body)
    if not args.no_write:
        update_benchmarks_md(
            REPO / "BENCHMARKS.md",
            "bench_train_step",
            "Training step: the Rule 110 reproduction's cost",
            body,
            "python benchmarks/bench_train_step.py",
        )


if __name__ == "__main__":
    main()
