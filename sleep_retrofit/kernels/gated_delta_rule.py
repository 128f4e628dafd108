"""Gated delta rule (GDN / JetBlock fast weights): chunked, recurrent and one-token step.

Layout (flash-linear-attention's): q, k [B, T, H, K]; v [B, T, H, V]; g, beta [B, T, H];
g is the log decay (<= 0). State S [B, H, K, V], always float32. Per token and head:
    S <- exp(g_t) * S
    u  = beta_t * (v_t - S^T k_t)
    S <- S + k_t u^T
    o_t = S^T (scale * q_t)
With use_qk_l2norm_in_kernel, q <- q / sqrt(sum q^2 + 1e-6) and likewise k (fla's in-kernel
formula, not F.normalize). scale defaults to K ** -0.5. Outputs are cast to v.dtype.

CONTRACT (filled in by the kernels work):
    chunk_gated_delta_rule(q, k, v, g, beta, *, scale=None, initial_state=None,
        output_final_state=False, use_qk_l2norm_in_kernel=False, chunk_size=64)
        -> (o [B,T,H,V], final_state [B,H,K,V] float32 or None)
    recurrent_gated_delta_rule(...same...) -> same
    gated_delta_rule_step(q [B,H,K], k [B,H,K], v [B,H,V], g [B,H], beta [B,H], state [B,H,K,V] or None,
        *, scale=None, use_qk_l2norm_in_kernel=False) -> (o [B,H,V], new_state [B,H,K,V])
"""
