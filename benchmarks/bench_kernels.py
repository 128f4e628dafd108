"""Kernel throughput on this machine: chunked vs recurrent torch kernels for the gated delta rule
(and the Mamba2 SSD scan when sleep_retrofit.kernels.ssd implements it), measured against this
machine's own fp32 matmul rate, the practical ceiling for the chunked kernels.

    python benchmarks/bench_kernels.py                # full run (~3-6 min on 1 thread), updates BENCHMARKS.md
    python benchmarks/bench_kernels.py --quick        # smoke run, prints only
    python benchmarks/bench_kernels.py --threads 2    # torch intra-op threads (default 1)

Forward passes under torch.no_grad(), float32, random inputs in the ranges a layer produces.
Dimensions: gated delta rule with Jet-Nemotron-2B's JetBlock (12 heads, head_k_dim 96,
head_v_dim 256); SSD with Mamba2-style heads (48 heads of P=64, N=128, G=1).

Each figure is the best of several runs (chunked: up to 3, token loops: up to 5) to filter
out interference from other processes; the token loops at B=8 stream a multi-MB state per
token and are the most sensitive to it (single runs varied 2-5x on the shared 2-core VM).
With one thread (the default) runs are timed by process CPU time (user + system, so page
faults count) rather than wall time, which on a busy shared machine also counts the time the
process waited for a core; the report says which clock was used and how much of the wall time
the process actually ran.

The recurrent kernels cost the same per token at any T (one state update per token), so at
long T they are timed on a prefix of `--recurrent-tokens` tokens and their tokens/s
extrapolated; the table says how many tokens were timed.

FLOP counts (multiply-add = 2 FLOPs; the matrix products each algorithm executes, elementwise
work not counted), per token and head, chunk C, key dim K, value dim V:

  gated delta rule, chunked (kernels/gated_delta_rule.py):
      K K^T and Q K^T inside the chunk                 4 C K
      T = (I + A)^-1, triangular solve against I       C^2     (C^3 per chunk, as trsm runs it)
      W = T (beta e^gamma K), U0 = T (beta V)          2 C K + 2 C V
      intra-chunk output (Q K^T * decay) U             2 C V
      across chunks: W S, (Q e^gamma) S, K^T U         6 K V
      total                                            6 C K + 4 C V + C^2 + 6 K V
  gated delta rule, recurrent: decay K V, S^T k 2 K V, rank-1 update 2 K V, S^T q 2 K V = 7 K V

  SSD (per token, all H heads; chunk L, head dim P, state N, G groups; kernels/ssd.py):
      chunked: C B^T 2 L N G, scores x 2 L P H, chunk writes 2 P N H, carried state read 2 P N H
      sequential: decay P N H, write dt x B^T 2 P N H, read S C 2 P N H = 5 P N H
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_common import REPO, load_average, machine_info, progress, update_benchmarks_md

from sleep_retrofit.kernels import chunk_gated_delta_rule, recurrent_gated_delta_rule

# Jet-Nemotron-2B JetBlock: 12 heads x 96 key dims, value dim 96 * 8/3 = 256.
GDN_HEADS, GDN_K, GDN_V = 12, 96, 256
# Mamba2-style SSD: 48 heads of 64 channels, state 128, one B/C group.
SSD_HEADS, SSD_P, SSD_N, SSD_G = 48, 64, 128, 1
# Targets the design asks the chunked gated delta rule to meet.
SPEEDUP_TARGET_T, SPEEDUP_TARGET = 4096, 10.0
MATMUL_SHARE_TARGET_T, MATMUL_SHARE_TARGET = 16384, 0.25
# Ops that are matrix products (for the profile's time split).
GEMM_OPS = {"aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"}


# ----------------------------------------------------------------------------- timing


# The clock every figure is timed with: process CPU time (user + system, so page faults count)
# when torch runs one thread, wall time otherwise. On a shared machine a single-threaded
# process's wall time also counts the time it waited for a core while other processes ran.
CLOCK: Callable[[], float] = time.process_time


def best_time(fn: Callable[[], object], *, repeats: int = 3, budget_s: float = 1.0) -> float:
    """Best time (by CLOCK) of up to `repeats` calls; stops early once `budget_s` seconds are
    spent (so long runs are timed once, short ones several times)."""
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        start = CLOCK()
        fn()
        elapsed = CLOCK() - start
        best, spent = min(best, elapsed), spent + elapsed
        if spent >= budget_s:
            break
    return best


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate: best of `repeats` size x size products."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    a @ b  # warm-up
    seconds = best_time(lambda: a @ b, repeats=repeats, budget_s=float("inf"))
    return 2 * size**3 / seconds / 1e9


def gemm_share(fn: Callable[[], object]) -> tuple[float, float]:
    """(share of self CPU time in matrix products, share in triangular solves) for one call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS)
    solve = sum(e.self_cpu_time_total for e in events if e.key == "aten::linalg_solve_triangular")
    return gemm / total, solve / total


# ----------------------------------------------------------------------------- workloads


@dataclass
class Row:
    batch: int
    seq_len: int
    chunked_tok_s: float
    recurrent_tok_s: float
    recurrent_timed: int
    chunked_gflops: float
    recurrent_gflops: float
    note: str = ""


def gdn_flops_per_token(chunk: int) -> tuple[float, float]:
    """(chunked, recurrent) FLOPs per token, all heads (see the module docstring)."""
    C, K, V = chunk, GDN_K, GDN_V
    chunked = 6 * C * K + 4 * C * V + C * C + 6 * K * V
    return GDN_HEADS * chunked, GDN_HEADS * 7 * K * V


def gdn_inputs(batch: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, seq_len, GDN_HEADS)
    return dict(
        q=torch.randn(*shape, GDN_K, generator=gen),
        k=F.normalize(torch.randn(*shape, GDN_K, generator=gen), dim=-1),
        v=torch.randn(*shape, GDN_V, generator=gen),
        g=-F.softplus(torch.randn(*shape, generator=gen)),
        beta=torch.rand(*shape, generator=gen),
    )


def prefix(inputs: dict[str, torch.Tensor], tokens: int) -> dict[str, torch.Tensor]:
    """The first `tokens` tokens of every per-token input (SSD's A is per head: kept whole)."""
    return {name: x if name == "A" else x[:, :tokens] for name, x in inputs.items()}


def bench_gdn(batches, seq_lens, chunk: int, recurrent_cap: int) -> tuple[list[Row], dict]:
    chunk_flops, recurrent_flops = gdn_flops_per_token(chunk)
    rows, shares = [], {}
    for batch in batches:
        warm = gdn_inputs(batch, 2 * chunk)
        chunk_gated_delta_rule(**warm, chunk_size=chunk)
        recurrent_gated_delta_rule(**prefix(warm, 8))
        for seq_len in seq_lens:
            inputs = gdn_inputs(batch, seq_len)
            seconds = best_time(
                lambda inputs=inputs: chunk_gated_delta_rule(**inputs, chunk_size=chunk), budget_s=20.0
            )
            chunked = batch * seq_len / seconds
            timed = min(seq_len, recurrent_cap)
            short = prefix(inputs, timed)
            seconds = best_time(
                lambda short=short: recurrent_gated_delta_rule(**short), repeats=5, budget_s=10.0
            )
            recurrent = batch * timed / seconds
            rows.append(
                Row(
                    batch=batch,
                    seq_len=seq_len,
                    chunked_tok_s=chunked,
                    recurrent_tok_s=recurrent,
                    recurrent_timed=timed,
                    chunked_gflops=chunked * chunk_flops / 1e9,
                    recurrent_gflops=recurrent * recurrent_flops / 1e9,
                )
            )
            if seq_len == SPEEDUP_TARGET_T:
                shares[batch] = gemm_share(
                    lambda inputs=inputs: chunk_gated_delta_rule(**inputs, chunk_size=chunk)
                )
            del inputs, short
            progress(
                f"gdn B={batch} T={seq_len}: chunked {chunked:,.0f} tok/s, recurrent {recurrent:,.0f} tok/s"
            )
    return rows, shares


def gdn_chunk_sweep(chunks, seq_len: int = SPEEDUP_TARGET_T, batch: int = 1) -> dict[int, float]:
    """Chunked tokens/s for several chunk sizes (the data behind a chunk size choice)."""
    inputs = gdn_inputs(batch, seq_len)
    return {
        c: batch * seq_len / best_time(lambda c=c: chunk_gated_delta_rule(**inputs, chunk_size=c))
        for c in chunks
    }


def ssd_functions():
    """(ssd_chunk_scan, ssd_sequential_scan) if implemented, else None."""
    try:
        from sleep_retrofit.kernels.ssd import ssd_chunk_scan, ssd_sequential_scan
    except ImportError:
        return None
    probe = ssd_inputs(1, 4)
    try:
        ssd_chunk_scan(**probe, chunk_size=2)
        ssd_sequential_scan(**probe)
    except NotImplementedError:
        return None
    return ssd_chunk_scan, ssd_sequential_scan


def ssd_inputs(batch: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return dict(
        x=torch.randn(batch, seq_len, SSD_HEADS, SSD_P, generator=gen),
        dt=F.softplus(torch.randn(batch, seq_len, SSD_HEADS, generator=gen) - 2.0),
        A=-torch.empty(SSD_HEADS).uniform_(0.25, 4.0, generator=gen),
        Bm=torch.randn(batch, seq_len, SSD_G, SSD_N, generator=gen),
        Cm=torch.randn(batch, seq_len, SSD_G, SSD_N, generator=gen),
    )


def ssd_flops_per_token(chunk: int) -> tuple[float, float]:
    L, P, N, H, G = chunk, SSD_P, SSD_N, SSD_HEADS, SSD_G
    return 2 * L * N * G + 2 * L * P * H + 4 * P * N * H, 5 * P * N * H


def bench_ssd(batches, seq_lens, chunk: int, recurrent_cap: int) -> list[Row]:
    functions = ssd_functions()
    if functions is None:
        return []
    chunk_scan, sequential_scan = functions
    chunk_flops, sequential_flops = ssd_flops_per_token(chunk)
    rows = []
    for batch in batches:
        warm = ssd_inputs(batch, 2 * chunk)
        chunk_scan(**warm, chunk_size=chunk)
        sequential_scan(**prefix(warm, 8))
        for seq_len in seq_lens:
            inputs = ssd_inputs(batch, seq_len)
            seconds = best_time(lambda inputs=inputs: chunk_scan(**inputs, chunk_size=chunk))
            chunked = batch * seq_len / seconds
            timed = min(seq_len, recurrent_cap)
            short = prefix(inputs, timed)
            seconds = best_time(lambda short=short: sequential_scan(**short), repeats=5, budget_s=10.0)
            sequential = batch * timed / seconds
            rows.append(
                Row(
                    batch=batch,
                    seq_len=seq_len,
                    chunked_tok_s=chunked,
                    recurrent_tok_s=sequential,
                    recurrent_timed=timed,
                    chunked_gflops=chunked * chunk_flops / 1e9,
                    recurrent_gflops=sequential * sequential_flops / 1e9,
                    note="",
                )
            )
            del inputs, short
            progress(
                f"ssd B={batch} T={seq_len}: chunked {chunked:,.0f} tok/s, sequential {sequential:,.0f} tok/s"
            )
    return rows


# ----------------------------------------------------------------------------- report


def table(rows: list[Row], matmul: float, chunk_flops: float, name: str) -> list[str]:
    """Markdown table; `name` is the token-by-token kernel's name ("recurrent", "sequential")."""
    lines = [
        f"| B | T | chunked tok/s | {name} tok/s | {name} timed on | chunked / {name} | chunked GFLOP/s "
        f"| % of matmul | {name} GFLOP/s | ceiling: speedup at matmul rate | note |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ceiling = matmul * 1e9 / chunk_flops / r.recurrent_tok_s
        timed = f"{r.recurrent_timed} tokens" + (" (extrapolated)" if r.recurrent_timed < r.seq_len else "")
        lines.append(
            f"| {r.batch} | {r.seq_len} | {r.chunked_tok_s:,.0f} | {r.recurrent_tok_s:,.0f} | {timed} "
            f"| {r.chunked_tok_s / r.recurrent_tok_s:.1f}x | {r.chunked_gflops:.1f} "
            f"| {100 * r.chunked_gflops / matmul:.0f}% | {r.recurrent_gflops:.1f} | {ceiling:.1f}x "
            f"| {r.note} |"
        )
    return lines


def report(info, matmul, chunk, gdn_rows, shares, sweep, ssd_rows, *, ssd_requested: bool) -> str:
    chunk_flops, recurrent_flops = gdn_flops_per_token(chunk)
    lines = ["### Machine", ""]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    lines += [f"- matmul rate used for the percentages below: **{matmul:.1f} GFLOP/s**"]
    lines += [
        "",
        f"### Gated delta rule (H={GDN_HEADS}, K={GDN_K}, V={GDN_V}, chunk {chunk}, fp32 forward, no grad)",
        "",
        f"FLOPs per token: chunked {chunk_flops / 1e6:.2f} M, recurrent {recurrent_flops / 1e6:.2f} M "
        f"(chunked does {chunk_flops / recurrent_flops:.2f}x the recurrent's FLOPs; counts in the script's "
        "docstring).",
        "",
    ]
    lines += table(gdn_rows, matmul, chunk_flops, "recurrent")
    lines += ["", "Targets:", ""]
    if not any(r.seq_len in (SPEEDUP_TARGET_T, MATMUL_SHARE_TARGET_T) for r in gdn_rows):
        lines.append(f"- evaluated at T={SPEEDUP_TARGET_T} and T={MATMUL_SHARE_TARGET_T} (full run only)")
    for r in gdn_rows:
        if r.seq_len == SPEEDUP_TARGET_T:
            ratio = r.chunked_tok_s / r.recurrent_tok_s
            verdict = "met" if ratio >= SPEEDUP_TARGET else "missed"
            lines.append(
                f"- chunked >= {SPEEDUP_TARGET:.0f}x recurrent at T={r.seq_len}, B={r.batch}: {ratio:.1f}x, "
                f"**{verdict}** (at the full matmul rate the chunked kernel would reach "
                f"{matmul * 1e9 / chunk_flops / r.recurrent_tok_s:.1f}x)"
            )
    for r in gdn_rows:
        if r.seq_len == MATMUL_SHARE_TARGET_T:
            share = r.chunked_gflops / matmul
            verdict = "met" if share >= MATMUL_SHARE_TARGET else "missed"
            lines.append(
                f"- chunked >= {MATMUL_SHARE_TARGET:.0%} of the matmul rate at T={r.seq_len}, B={r.batch}: "
                f"{share:.0%}, **{verdict}**"
            )
    if sweep:
        measured = ", ".join(f"C={c}: {tok_s:,.0f}" for c, tok_s in sweep.items())
        lines.append(f"- chunk size sweep, chunked tok/s at T={SPEEDUP_TARGET_T}, B=1: {measured}")
    for batch, (gemm, solve) in shares.items():
        lines.append(
            f"- profile, chunked T={SPEEDUP_TARGET_T} B={batch}: {gemm:.0%} of the time in batched matmuls, "
            f"{solve:.0%} in the triangular solve, {1 - gemm - solve:.0%} in copies/elementwise/layout"
        )
    if ssd_rows:
        ssd_chunk_flops, _ = ssd_flops_per_token(chunk)
        dims = f"H={SSD_HEADS}, P={SSD_P}, N={SSD_N}, G={SSD_G}"
        lines += ["", f"### Mamba2 SSD ({dims}, chunk {chunk}, fp32 forward, no grad)", ""]
        lines += table(ssd_rows, matmul, ssd_chunk_flops, "sequential")
    elif ssd_requested:
        lines += ["", "SSD: sleep_retrofit.kernels.ssd has no implementation yet; not measured."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small T and batch, no file update")
    parser.add_argument("--chunk-size", type=int, default=64)
    parser.add_argument(
        "--recurrent-tokens",
        type=int,
        default=None,
        help="time recurrent kernels on at most this many tokens (default 512; quick 64)",
    )
    parser.add_argument("--batches", type=int, nargs="+", help="override the batch sizes")
    parser.add_argument("--seq-lens", type=int, nargs="+", help="override the sequence lengths")
    parser.add_argument("--no-ssd", action="store_true")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    # (--batches / --seq-lens runs are partial: they never update BENCHMARKS.md)
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    global CLOCK
    CLOCK = time.process_time if args.threads == 1 else time.perf_counter
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    torch.set_grad_enabled(False)
    batches, seq_lens = ((1, 2), (256, 1024)) if args.quick else ((1, 8), (1024, 4096, 16384))
    batches, seq_lens = tuple(args.batches or batches), tuple(args.seq_lens or seq_lens)
    recurrent_cap = args.recurrent_tokens or (64 if args.quick else 512)

    info = machine_info(args.threads)
    progress(f"measuring matmul rate ({args.threads} thread(s))")
    matmul_start = matmul_gflops()
    gdn_rows, shares = bench_gdn(batches, seq_lens, args.chunk_size, recurrent_cap)
    sweep = {} if args.quick else gdn_chunk_sweep((16, 32, 64, 128))
    ssd_rows = [] if args.no_ssd else bench_ssd(batches, seq_lens, args.chunk_size, recurrent_cap)
    matmul_end = matmul_gflops()
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    info["timing"] = (
        "process CPU time (user + system) of the best of several runs; over the whole benchmark the "
        f"process ran {cpu / wall:.0%} of the wall-clock time"
        if args.threads == 1
        else "wall time of the best of several runs"
    )
    info["load average at end"] = load_average()
    info["fp32 matmul, 2048 x 2048, best of 5 (start, end)"] = f"{matmul_start:.1f}, {matmul_end:.1f} GFLOP/s"
    # Percentages are against the better of the two: the practical ceiling on this machine.
    matmul = max(matmul_start, matmul_end)

    body = report(
        info, matmul, args.chunk_size, gdn_rows, shares, sweep, ssd_rows, ssd_requested=not args.no_ssd
    )
    print(body)
    if not (args.quick or args.no_write or args.batches or args.seq_lens):
        command = "python benchmarks/bench_kernels.py" + (
            f" --threads {args.threads}" if args.threads != 1 else ""
        )
        update_benchmarks_md(args.output, "bench_kernels", "Kernels", body, command)
        print(f"updated {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
