"""References of the RWKV-7 WKV operator, written from its definition (RWKV-LM's
RWKV-v7/rwkv_v7_demo.py), not from a kernel.

r, w, k, v, a, b: (B, T, H, N). Per batch row and head the state S is N x N, S[i][j] with i the
value index and j the key index. With the decay d_t = exp(-exp(w_t)) (per key channel):

    S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T
    y_t = S_t r_t

The model calls it with a = -kk, b = kk * a_coef, and w = -softplus(-(w0 + lora)) - 0.5.

- ``wkv7_naive``: the Python loop over t in the math dtype (float32; float64 for float64
  inputs), differentiable by autograd in every input and the initial state: the baseline.
- ``wkv7_exact``: float64 ground truth, the same definition evaluated entry by entry with no
  matrix products (so it shares no code path with ``wkv7_naive``). Small sizes only.
- ``to_fla`` / ``from_fla``: flash-linear-attention's convention (w as the log-decay log d_t,
  the state stored transposed as (B, H, K, V)).
"""

from __future__ import annotations

import math

import torch


def math_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for float64 inputs, else float32 (16-bit inputs are computed in float32)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check(r, w, k, v, a, b, state):
    shape = tuple(r.shape)
    if r.dim() != 4:
        raise ValueError(f"wkv7: r must have shape (B, T, H, N), got {shape}")
    for name, x in (("w", w), ("k", k), ("v", v), ("a", a), ("b", b)):
        if tuple(x.shape) != shape:
            raise ValueError(f"wkv7: {name} must have r's shape {shape}, got {tuple(x.shape)}")
    B, _, H, N = shape
    if state is not None and tuple(state.shape) != (B, H, N, N):
        raise ValueError(f"wkv7: state must have shape (B, H, N, N) = {(B, H, N, N)}, got {tuple(state.shape)}")
    return B, H, N


def wkv7_naive(r, w, k, v, a, b, state=None):
    """RWKV-7 WKV as a loop over t: returns (y in r's dtype, final state (B, H, N, N) in the
    math dtype). ``state`` None is the zero state; T = 0 returns it unchanged."""
    B, H, N = _check(r, w, k, v, a, b, state)
    dt, out_dtype = math_dtype(r), r.dtype
    r, w, k, v, a, b = (x.to(dt) for x in (r, w, k, v, a, b))
    S = r.new_zeros((B, H, N, N)) if state is None else state.to(dt)
    d = torch.exp(-torch.exp(w))
    ys = []
    for t in range(r.shape[1]):
        sa = S @ a[:, t, :, :, None]  # (B, H, N, 1): S_{t-1} a_t
        S = S * d[:, t, :, None, :] + sa * b[:, t, :, None, :] + v[:, t, :, :, None] * k[:, t, :, None, :]
        ys.append((S @ r[:, t, :, :, None])[..., 0])
    y = torch.stack(ys, dim=1) if ys else r.new_zeros(r.shape)
    return y.to(out_dtype), S


@torch.no_grad()
def wkv7_exact(r, w, k, v, a, b, state=None, max_elements=1 << 16):
    """Float64 ground truth: the definition entry by entry (sums over the key index written
    out, no matrix products). Returns (y float64, final state float64). O(T N^2) Python work
    per (batch, head): for tests at small sizes (B T H N^2 <= max_elements)."""
    B, H, N = _check(r, w, k, v, a, b, state)
    T = r.shape[1]
    if B * T * H * N * N > max_elements:
        raise ValueError(f"wkv7_exact is for small sizes: B*T*H*N*N = {B * T * H * N * N} > {max_elements}")
    f = [x.detach().double().cpu().tolist() for x in (r, w, k, v, a, b)]
    R, W, K, V, A, Bv = f
    S0 = None if state is None else state.detach().double().cpu().tolist()

    y = [[[[0.0] * N for _ in range(H)] for _ in range(T)] for _ in range(B)]
    out = []
    for bi in range(B):
        heads = []
        for h in range(H):
            S = [[0.0] * N for _ in range(N)] if S0 is None else [row[:] for row in S0[bi][h]]
            for t in range(T):
                d = [math.exp(-math.exp(W[bi][t][h][j])) for j in range(N)]
                sa = [sum(S[i][j] * A[bi][t][h][j] for j in range(N)) for i in range(N)]
                S = [[S[i][j] * d[j] + sa[i] * Bv[bi][t][h][j] + V[bi][t][h][i] * K[bi][t][h][j]
                      for j in range(N)] for i in range(N)]
                for i in range(N):
                    y[bi][t][h][i] = sum(S[i][j] * R[bi][t][h][j] for j in range(N))
            heads.append(S)
        out.append(heads)
    return (torch.tensor(y, dtype=torch.float64).view(B, T, H, N),
            torch.tensor(out, dtype=torch.float64).view(B, H, N, N))


def to_fla(w, state=None):
    """Our w (d = exp(-exp(w))) and state (B, H, N_v, N_k) in fla's convention: the log-decay
    log d = -exp(w), and the state transposed to (B, H, K, V)."""
    return -torch.exp(w), None if state is None else state.transpose(-1, -2)


def from_fla(w_log, state=None):
    """fla's log-decay (< 0) and (B, H, K, V) state in our convention: w = log(-log d), the
    state as (B, H, V, K)."""
    return torch.log(-w_log), None if state is None else state.transpose(-1, -2)
