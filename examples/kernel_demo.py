"""The fast-weight machinery on a built-in default, in a few seconds on a CPU: the chunked gated
delta rule agrees with the token-by-token recurrence and is faster, and a JetBlock carries its
state across calls exactly as if the sequence had been processed in one go.

    python examples/kernel_demo.py [--tokens 2048] [--threads 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from sleep_retrofit.kernels import chunk_gated_delta_rule, recurrent_gated_delta_rule
from sleep_retrofit.layers import JetBlock


def run(args: argparse.Namespace) -> int:
    """Show the fast-weight machinery on a built-in default: the chunked gated delta rule
    agrees with the token-by-token recurrence and is faster, and a JetBlock carries its state
    across calls exactly as if the sequence had been processed in one go."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    b, t, h, dk, dv = 1, args.tokens, 4, 64, 128
    q, k = torch.randn(b, t, h, dk), torch.randn(b, t, h, dk)
    v = torch.randn(b, t, h, dv)
    g = -torch.nn.functional.softplus(torch.randn(b, t, h))
    beta = torch.rand(b, t, h)
    kw = dict(use_qk_l2norm_in_kernel=True, output_final_state=True)

    start = time.perf_counter()
    o_chunk, s_chunk = chunk_gated_delta_rule(q, k, v, g, beta, **kw)
    t_chunk = time.perf_counter() - start
    start = time.perf_counter()
    o_rec, s_rec = recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    t_rec = time.perf_counter() - start
    err = ((o_chunk - o_rec).abs().max() / o_rec.abs().max()).item()
    print(f"gated delta rule, {t} tokens x {h} heads (K={dk}, V={dv}), {args.threads} thread(s):")
    print(f"  chunked   {t / t_chunk:12,.0f} tokens/s")
    print(f"  recurrent {t / t_rec:12,.0f} tokens/s   (chunked is {t_rec / t_chunk:.1f}x faster)")
    print(f"  max relative difference of outputs: {err:.2e}")

    block = JetBlock(hidden_size=64, num_heads=2, head_dim=16, expand_v=2.0).eval()
    x = torch.randn(2, 48, 64)
    with torch.no_grad():
        y_full, state_full = block(x)
        y_a, state = block(x[:, :30])
        y_b, state = block(x[:, 30:], state=state)
    split_err = (torch.cat([y_a, y_b], dim=1) - y_full).abs().max().item()
    state_err = (state.recurrent - state_full.recurrent).abs().max().item()
    print("JetBlock state carry (48 tokens in one call vs 30 + 18 with the state passed along):")
    print(f"  max output difference {split_err:.2e}, max state difference {state_err:.2e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=2048, help="sequence length (default 2048)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
