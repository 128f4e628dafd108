"""Causal depthwise convolutions with carried state: static weights (GDN short conv, Mamba2)
and dynamic per-token generated kernels (Jet-Nemotron's value conv).

Layout: x [B, T, D] (channels last, like the rest of the model); conv state [B, D, W-1]
holding the last W-1 inputs (zeros at sequence start). Static weight [D, W]. Dynamic kernels
[B, T, D, W]. Output index convention: y_t[d] = sum_i w[d, i] * x_{t-(W-1)+i}[d], i.e. the
last tap multiplies the current token (torch Conv1d with left padding W-1).

CONTRACT (filled in by the kernels work):
    causal_conv1d(x, weight, bias=None, *, activation=None, initial_state=None, output_final_state=False)
        -> (y [B,T,D], final_state [B,D,W-1] or None)   activation in (None, "silu")
    causal_conv1d_step(x [B,D], state [B,D,W-1], weight, bias=None, *, activation=None) -> (y [B,D], new_state)
    dynamic_causal_conv1d(x, kernels [B,T,D,W], *, activation=None, initial_state=None,
        output_final_state=False) -> (y, final_state)
    dynamic_causal_conv1d_step(x [B,D], kernel [B,D,W], state, *, activation=None) -> (y, new_state)
"""
