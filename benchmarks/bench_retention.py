"""Retention at insertion: how much of a chunk's write an inserted fast-weight block keeps after
K more chunks of N passes, with the layers' own (fla / Mamba2) decay init and with the retention
init (`FastWeightBlock.init_retention`, docs/sleep.md "Retention at insertion").

    python benchmarks/bench_retention.py

Two measurements:
1. Real shapes, decay alone: blocks as `default_mixer_kwargs` builds them for hidden size 2048
   (a Llama-1B-like base; Ouro-1.4B's Jet blocks have the same sizes), L = 2048, N = 4. A head's
   per-token log decay at insertion is A * softplus(dt_bias) (the gate's input projection near
   zero), so after K chunks it keeps exp(-A * dt * L * N * K) of a write. Reported: the best
   head's share and the fraction of heads keeping >= 1%, for K = 1, 4, 8.
2. Through the engine, everything included (delta-rule erasure, short convs, real gate inputs):
   a tiny Llama converted at L = 64, N = 4; the share |S(a + later) - S(b + later)| /
   |S(a) - S(b)| of the state difference two first chunks a, b leave after 4 more chunks (the
   blocks are the identity at insertion, so the later chunks' inputs do not depend on a or b).
Results: BENCHMARKS.md, section "Retention at insertion". No timings: this is about values.
"""

from __future__ import annotations

import statistics

import torch
from bench_common import REPO, machine_info, progress, update_benchmarks_md
from transformers import LlamaConfig, LlamaForCausalLM

from sleep_retrofit.modeling import SleepRetrofitForCausalLM
from sleep_retrofit.retrofit import (
    RETENTION_HORIZON_CHUNKS,
    FastWeightBlock,
    default_mixer_kwargs,
    default_plan,
)
from sleep_retrofit.sleep import SleepCache, SleepSettings

KINDS = ("gdn", "jet", "mamba2")
SEEDS = range(5)


def decay_shares(
    kind: str, hidden: int, window: int, passes: int, retention: bool, seed: int
) -> torch.Tensor:
    """Per head: the share of a write kept after 1, 4 and 8 more chunks (decay alone) [3, H]."""
    torch.manual_seed(seed)
    block = FastWeightBlock(
        kind, hidden, mixer_kwargs=default_mixer_kwargs(kind, hidden), zero_init_output=True
    )
    if retention:
        block.init_retention(window, passes)
    with torch.no_grad():
        rate = block.mixer.A_log.exp() * torch.nn.functional.softplus(block.mixer.dt_bias)
        return torch.stack([torch.exp(-rate * window * passes * k) for k in (1, 4, 8)])


def engine_share(kind: str, retention: bool, seed: int, window: int = 64, passes: int = 4) -> float:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
    )  # fmt: skip
    base = LlamaForCausalLM(config).eval()
    model = SleepRetrofitForCausalLM.from_base(
        base,
        plan=default_plan(config, kind=kind),
        settings=SleepSettings(passes=passes, window=window),
        retention_chunks=RETENTION_HORIZON_CHUNKS if retention else None,
    )
    generator = torch.Generator().manual_seed(seed)
    a, b, later = (torch.randint(0, 256, (1, n), generator=generator) for n in (window, window, 4 * window))

    def states(ids: torch.Tensor) -> dict[str, torch.Tensor]:
        cache = SleepCache()
        with torch.no_grad():
            model.engine().forward(ids, cache, output_positions=torch.zeros(ids.shape[1], dtype=torch.bool))
        return {k: s.recurrent for k, s in cache.states.items()}

    first_a, first_b = states(a), states(b)
    last_a, last_b = states(torch.cat([a, later], 1)), states(torch.cat([b, later], 1))
    return min(float((last_a[k] - last_b[k]).norm() / (first_a[k] - first_b[k]).norm()) for k in first_a)


def main() -> None:
    torch.set_num_threads(1)
    hidden, window, passes = 2048, 2048, 4
    lines = [
        "| machine | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in machine_info(1).items()],
        "",
        f"**1. Decay alone, real shapes** (hidden {hidden}, L = {window}, N = {passes}; "
        f"{len(SEEDS)} seeds of the layers' random init; a head keeps exp(-A dt L N K) of a write "
        "after K more chunks)",
        "",
        "| block | init | heads | best head K=1 | best head K=4 | best head K=8 | heads >= 1% at K=4 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        for retention in (False, True):
            progress(f"decay {kind} retention={retention}")
            shares = torch.cat(
                [decay_shares(kind, hidden, window, passes, retention, s) for s in SEEDS], dim=1
            )
            best = shares.max(dim=1).values  # over all heads of all seeds
            kept = float((shares[1] >= 0.01).float().mean())
            heads = shares.shape[1] // len(SEEDS)
            name = "retention (this toolkit)" if retention else "fla / Mamba2 default"
            lines.append(
                f"| {kind} | {name} | {heads} | {best[0]:.3g} | {best[1]:.3g} | {best[2]:.3g} | {kept:.0%} |"
            )
    lines += [
        "",
        "**2. Through the engine** (tiny Llama, hidden 64, L = 64, N = 4; share of the state difference "
        "left by the first chunk after 4 more chunks, the worst block; median [min, max] over "
        f"{len(SEEDS)} seeds)",
        "",
        "| block | fla / Mamba2 default | retention (this toolkit) |",
        "|---|---:|---:|",
    ]
    for kind in KINDS:
        cells = []
        for retention in (False, True):
            progress(f"engine {kind} retention={retention}")
            values = [engine_share(kind, retention, s) for s in SEEDS]
            cells.append(f"{statistics.median(values):.3g} [{min(values):.3g}, {max(values):.3g}]")
        lines.append(f"| {kind} | {cells[0]} | {cells[1]} |")
    body = "\n".join(lines) + "\n\n"
    print(body)
    update_benchmarks_md(
        REPO / "BENCHMARKS.md",
        "bench_retention",
        "Retention at insertion",
        body,
        "python benchmarks/bench_retention.py",
    )


if __name__ == "__main__":
    main()
