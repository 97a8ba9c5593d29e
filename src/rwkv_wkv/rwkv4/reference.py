"""Reference implementations of WKV, for tests and benchmarks.

- ``wkv_naive``: the straightforward Python loop over T (vectorised over B and C) with plain
  torch ops, differentiable by autograd to any order. It is the baseline the benchmark compares
  against, and the ops' route for derivatives beyond the kernels' first order.
- ``wkv_exact``: float64 ground truth from the closed form (a weighted average of v with
  log-weights, normalised by their maximum), independent of the recurrence. O(T^2) work.
"""

from __future__ import annotations

import torch

from .state import EMPTY_EXPONENT, math_dtype


def wkv_naive(time_decay, time_first, k, v, state=None, return_state=False):
    """WKV as a Python loop over t, in float32 (float64 for float64 k). Returns y (k's dtype);
    with ``return_state``, (y, new_state) exactly as ``rwkv_wkv.wkv_with_state`` returns them.

    It is the kernels' recurrence (the shared exponent, so k up to +-1000 stays finite) in
    plain differentiable torch ops, so besides being the benchmark's baseline it is how
    ``rwkv_wkv.ops`` serves every derivative the kernels do not compute themselves (second
    order, forward mode, torch.func's grad / jvp transforms): autograd and functorch
    differentiate it to any order. T = 0 returns the state unchanged.
    """
    dtype = math_dtype(k)
    w = -torch.exp(time_decay.to(dtype))
    u = time_first.to(dtype)
    kf, vf = k.to(dtype), v.to(dtype)
    B, T, C = k.shape
    if state is None:
        aa = kf.new_zeros((B, C))
        bb = kf.new_zeros((B, C))
        pp = kf.new_full((B, C), EMPTY_EXPONENT, dtype=torch.float32).to(dtype)  # the kernels' -1e38f
    else:
        aa, bb, pp = state.to(dtype).unbind(1)
    ys = []
    # unbind, not k[:, t]: indexing's backward would build a full (B, T, C) gradient per step,
    # making the loop's backward O(T^2) — slower than it needs to be for a fair baseline.
    for kt, vt in zip(kf.unbind(1), vf.unbind(1)):
        bonus = u + kt
        q = torch.maximum(pp, bonus)
        e1, e2 = torch.exp(pp - q), torch.exp(bonus - q)
        ys.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        decayed = pp + w
        q = torch.maximum(decayed, kt)
        e1, e2 = torch.exp(decayed - q), torch.exp(kt - q)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, q
    y = torch.stack(ys, dim=1).to(k.dtype) if ys else k[:, :0]
    return (y, torch.stack([aa, bb, pp], dim=1)) if return_state else y


def wkv_exact(time_decay, time_first, k, v, state=None, return_state=False, max_elements=1 << 23):
    """Ground truth in float64 from the closed form:

        y_t = (sum_{i<t} e^{(t-1-i)w + k_i} v_i + e^{u+k_t} v_t + e^{pp + t w} aa)
            / (sum_{i<t} e^{(t-1-i)w + k_i}     + e^{u+k_t}     + e^{pp + t w} bb)

    with w = -exp(time_decay) and the optional input state (aa, bb, pp) of shape (B, 3, C).
    Every sum is normalised by its largest log-weight, so k up to +-1000 is exact.
    Returns y (float64, (B, T, C)); with ``return_state``, also the state after step T-1 in the
    kernel's representation (pp = the largest log-weight). Differentiable by autograd.
    """
    f64 = torch.float64
    w = -torch.exp(time_decay.to(f64))
    u = time_first.to(f64)
    k = k.to(f64)
    v = v.to(f64)
    B, T, C = k.shape
    dev = k.device
    if state is None:
        aa = torch.zeros((B, C), dtype=f64, device=dev)
        bb = torch.zeros((B, C), dtype=f64, device=dev)
        pp = torch.full((B, C), EMPTY_EXPONENT, dtype=f64, device=dev)
    else:
        aa, bb, pp = state.to(f64).unbind(1)
    neg_inf = torch.tensor(float("-inf"), dtype=f64, device=dev)
    has_state = (aa != 0) | (bb != 0)

    ys = []
    t0 = 0
    while t0 < T:
        # rows [t0, t1) see the columns i < t1: B * rows * t1 * C elements per block
        rows = max(1, min(T - t0, max_elements // max(1, B * min(T, t0 + 64) * C)))
        t1 = t0 + rows
        tt = torch.arange(t0, t1, device=dev)
        ii = torch.arange(t1, device=dev)
        lag = (tt[:, None] - 1 - ii[None, :]).to(f64)  # (rows, t1)
        # past tokens i < t: log-weight (t-1-i) w + k_i
        logw = lag[None, :, :, None] * w + k[:, None, :t1, :]  # (B, rows, t1, C)
        logw.masked_fill_((ii[None, :] >= tt[:, None])[None, :, :, None], float("-inf"))
        bonus = u + k[:, t0:t1]  # (B, rows, C): the current token's log-weight
        state_log = pp[:, None, :] + tt[None, :, None].to(f64) * w  # (B, rows, C)
        m = torch.maximum(logw.amax(dim=2), bonus)
        m = torch.maximum(m, torch.where(has_state[:, None, :], state_log, neg_inf))
        if logw.requires_grad:
            e = torch.exp(logw - m[:, :, None, :])
        else:  # in place: half the memory traffic of the dominant O(T^2) step
            e = logw.sub_(m[:, :, None, :]).exp_()
        eb = torch.exp(bonus - m)
        es = torch.exp(state_log - m)
        num = torch.einsum("brtc,btc->brc", e, v[:, :t1]) + eb * v[:, t0:t1] + aa[:, None, :] * es
        den = e.sum(dim=2) + eb + bb[:, None, :] * es
        ys.append(num / den)
        t0 = t1
    y = torch.cat(ys, dim=1) if ys else k[:, :0]
    if not return_state:
        return y
    if T == 0:  # no step: the state as it was
        return y, torch.stack([aa, bb, pp], dim=1)

    lag = (T - 1 - torch.arange(T, device=dev)).to(f64)
    logw = lag[None, :, None] * w + k  # (B, T, C)
    state_log = pp + T * w
    p_new = torch.maximum(logw.amax(dim=1), state_log)
    e = torch.exp(logw - p_new[:, None, :])
    es = torch.exp(state_log - p_new)
    a_new = (e * v).sum(dim=1) + aa * es
    b_new = e.sum(dim=1) + bb * es
    return y, torch.stack([a_new, b_new, p_new], dim=1)
