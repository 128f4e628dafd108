"""Mamba2 state-space duality (SSD) scan: chunked, sequential reference and one-token step.

Layout (mamba_ssm's): x [B, T, H, P]; dt [B, T, H] (already softplus'ed and biased by the
caller unless dt_bias/dt_softplus are given); A [H] (negative); Bm, Cm [B, T, G, N] with H
divisible by G; D [H] or None. State [B, H, P, N], float32. Per token and head:
    dA = exp(dt_t * A);  S <- dA * S + dt_t * x_t B_t^T;  y_t = S C_t + D * x_t

CONTRACT (filled in by the kernels work):
    ssd_chunk_scan(x, dt, A, Bm, Cm, *, D=None, dt_bias=None, dt_softplus=False,
        initial_state=None, output_final_state=False, chunk_size=64)
        -> (y [B,T,H,P], final_state [B,H,P,N] or None)
    ssd_sequential_scan(...same...) -> same
    ssd_step(x [B,H,P], dt [B,H], A [H], Bm [B,G,N], Cm [B,G,N], state, *, D=None,
        dt_bias=None, dt_softplus=False) -> (y [B,H,P], new_state)
"""
