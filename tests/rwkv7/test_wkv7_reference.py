"""The RWKV-7 WKV references (src/rwkv_wkv/rwkv7/reference.py): the loop baseline against the
entry-by-entry float64 definition, state carried over segments, gradients through the state,
and fla's convention."""

from __future__ import annotations

import pytest
import torch

from rwkv_wkv.rwkv7.reference import from_fla, to_fla, wkv7_exact, wkv7_naive


def inputs(B=2, T=7, H=2, N=4, dtype=torch.float64, seed=0, decay=None):
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=dtype) for _ in range(3))
    # as the model forms them: w = -softplus(-x) - 0.5, a = -kk, b = kk * a_coef (kk unit per head)
    w = -torch.nn.functional.softplus(-torch.randn(B, T, H, N, generator=g, dtype=dtype)) - 0.5
    if decay is not None:
        w = torch.full_like(w, decay)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g, dtype=dtype), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, N, generator=g, dtype=dtype)
    return r, w, k, v, a, b


def test_naive_equals_the_definition_entry_by_entry():
    x = inputs()
    state = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y, s = wkv7_naive(*x, state=state)
    ye, se = wkv7_exact(*x, state=state)
    torch.testing.assert_close(y, ye, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s, se, rtol=1e-12, atol=1e-12)


def test_one_step_by_hand():
    """T = 1, N = 1 from the zero state: S = v k, y = v k r."""
    r, w, k, v, a, b = (torch.tensor([[[[x]]]], dtype=torch.float64) for x in (2.0, 0.3, 3.0, 5.0, -1.0, 0.5))
    y, s = wkv7_naive(r, w, k, v, a, b)
    assert y.item() == pytest.approx(5 * 3 * 2) and s.item() == pytest.approx(15)
    # a second step: S = S d + (S a) b + v k
    d = torch.exp(-torch.exp(w)).item()
    y2, s2 = wkv7_naive(r, w, k, v, a, b, state=s)
    assert s2.item() == pytest.approx(15 * d + 15 * -1.0 * 0.5 + 15)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_lower_precision_inputs_compute_in_float32(dtype, tol):
    x64 = inputs(T=17)
    x = [t.to(dtype) for t in x64]
    y, s = wkv7_naive(*x)
    assert y.dtype == dtype and s.dtype == torch.float32
    ye, _ = wkv7_exact(*[t.double() for t in x])
    assert ((y.double() - ye).abs().max() / ye.abs().max()).item() < tol


@pytest.mark.parametrize("split", [1, 16, 17, 32, 33])
def test_segments_with_the_state_carried_equal_one_pass(split):
    x = [t.requires_grad_() for t in inputs(T=40, N=3)]
    s0 = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y, s = wkv7_naive(*x, state=s0)
    full = torch.autograd.grad((y.square().sum() + s.sum()), [*x, s0])
    y1, s1 = wkv7_naive(*[t[:, :split] for t in x], state=s0)
    y2, s2 = wkv7_naive(*[t[:, split:] for t in x], state=s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    torch.testing.assert_close(s2, s)
    parts = torch.autograd.grad((y1.square().sum() + y2.square().sum() + s2.sum()), [*x, s0])
    for g1, g2 in zip(full, parts):
        torch.testing.assert_close(g1, g2)


def test_gradcheck_every_input_and_the_state():
    x = [t.requires_grad_() for t in inputs(B=1, T=5, H=2, N=3)]
    s0 = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *z: wkv7_naive(*z[:6], state=z[6]), (*x, s0))


def test_empty_sequence_returns_the_state():
    x = inputs(T=0)
    s0 = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    y, s = wkv7_naive(*x, state=s0)
    assert y.shape == (2, 0, 2, 4) and torch.equal(s, s0)


@pytest.mark.parametrize("decay", [-20.0, 3.0])  # d near 1 (exp(-exp(-20))) and near 0 (exp(-exp(3)))
def test_extreme_decays(decay):
    x = inputs(T=9, decay=decay)
    y, s = wkv7_naive(*x)
    ye, se = wkv7_exact(*x)
    torch.testing.assert_close(y, ye, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(y).all()


def test_nan_propagates():
    r, w, k, v, a, b = inputs(T=4)
    v = v.clone()
    v[0, 1, 0, 2] = float("nan")
    y, s = wkv7_naive(r, w, k, v, a, b)
    assert torch.isnan(y[0, 1:, 0]).any() and not torch.isnan(y[1]).any() and not torch.isnan(y[0, 0]).any()


def test_fla_convention_round_trip_and_meaning():
    r, w, k, v, a, b = inputs(T=6)
    s0 = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    w_log, s_fla = to_fla(w, s0)
    assert (w_log < 0).all() and s_fla.shape == (2, 2, 4, 4)
    w_back, s_back = from_fla(w_log, s_fla)
    torch.testing.assert_close(w_back, w)
    assert torch.equal(s_back, s0)
    # fla's recurrence on its own layout (S as (K, V)): S = diag(exp(w_log)) S + b (a^T S) + k v^T, y = S^T r
    S = s_fla.clone()
    ys = []
    for t in range(6):
        at_s = (a[:, t, :, :, None] * S).sum(-2, keepdim=True)  # (B, H, 1, V): a^T S
        decay = torch.exp(w_log[:, t, :, :, None])
        S = decay * S + b[:, t, :, :, None] * at_s + k[:, t, :, :, None] * v[:, t, :, None, :]
        ys.append((S * r[:, t, :, :, None]).sum(-2))
    y, s = wkv7_naive(r, w, k, v, a, b, state=s0)
    torch.testing.assert_close(torch.stack(ys, 1), y)
    torch.testing.assert_close(S.transpose(-1, -2), s)


def test_bad_shapes_name_the_argument():
    r, w, k, v, a, b = inputs()
    with pytest.raises(ValueError, match="a must have r's shape"):
        wkv7_naive(r, w, k, v, a[:, :3], b)
    with pytest.raises(ValueError, match=r"state must have shape \(B, H, N, N\)"):
        wkv7_naive(r, w, k, v, a, b, state=torch.zeros(2, 2, 4, 3))
    with pytest.raises(ValueError, match=r"r must have shape \(B, T, H, N\)"):
        wkv7_naive(r[0], w, k, v, a, b)
