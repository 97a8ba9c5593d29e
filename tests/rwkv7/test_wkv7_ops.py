"""The RWKV-7 WKV op (rwkv_wkv.wkv7, torch.ops.wkv.wkv7_forward / wkv7_backward) against the
float64 references of src/rwkv_wkv/rwkv7/reference.py, on every backend (CPU kernels per
instruction set, the CUDA kernels' bodies emulated on the CPU, the GPU when there is one)."""

from __future__ import annotations

import pytest
import torch
from wkv7_helpers import TOL, assert_rel, backend7, inputs, state  # noqa: F401 (a fixture)

import rwkv_wkv
from rwkv_wkv.rwkv7.reference import from_fla, to_fla, wkv7_exact, wkv7_naive

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


def _reference_grads(xs, s0, gy, gs):
    """Gradients of <y, gy> + <state, gs> through the float64 naive loop."""
    prim = [x.detach().double().cpu().requires_grad_() for x in xs]
    s = None if s0 is None else s0.detach().double().cpu().requires_grad_()
    y, st = wkv7_naive(*prim, s)
    loss = (y * gy.double().cpu()).sum() + (st * gs.double().cpu()).sum()
    grads = torch.autograd.grad(loss, prim + ([s] if s is not None else []))
    return y.detach(), st.detach(), grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 1, 2, 4), (1, 17, 3, 64), (2, 33, 2, 17), (1, 70, 1, 5)])
def test_forward_and_backward_match_the_reference(backend7, dtype, shape):
    B, T, H, N = shape
    xs = inputs(B, T, H, N, dtype=dtype, seed=T + N, device=backend7)
    s0 = state(B, H, N, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=backend7)
    xs = [x.requires_grad_() for x in xs]
    s0.requires_grad_()
    y, st = rwkv_wkv.wkv7(*xs, s0)
    assert y.dtype == dtype and st.dtype == s0.dtype
    g = torch.Generator().manual_seed(5)
    gy = torch.randn(y.shape, generator=g).to(backend7, dtype)
    gs = torch.randn(st.shape, generator=g).to(backend7, st.dtype)
    got = torch.autograd.grad((y * gy).sum() + (st * gs).sum(), [*xs, s0])
    ye, se, want = _reference_grads(xs, s0, gy, gs)
    tol = TOL[dtype]
    assert_rel(y, ye, tol, "y")
    assert_rel(st, se, tol, "state")
    for name, a, b in zip(["r", "w", "k", "v", "a", "b", "state"], got, want):
        assert a.dtype == (s0.dtype if name == "state" else dtype)
        assert_rel(a, b, 4 * tol, "grad " + name)


def test_float64_is_exact_against_the_definition(backend7):
    xs = inputs(2, 9, 2, 5, device=backend7)
    s0 = state(2, 2, 5, device=backend7)
    y, st = rwkv_wkv.wkv7(*xs, s0)
    ye, se = wkv7_exact(*xs, state=s0)
    assert_rel(y, ye, 1e-12, "y")
    assert_rel(st, se, 1e-12, "state")


def test_gradcheck_every_input_and_the_state(backend7):
    xs = [x.requires_grad_() for x in inputs(1, 35, 2, 3, seed=3, device=backend7)]
    s0 = state(1, 2, 3, device=backend7).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: rwkv_wkv.wkv7(*a), (*xs, s0))


def test_long_sequence_t4096(backend7):
    B, T, H, N = 1, 4096, 2, 8
    xs = [x.requires_grad_() for x in inputs(B, T, H, N, dtype=torch.float32, seed=9, device=backend7)]
    y, st = rwkv_wkv.wkv7(*xs)
    gy = torch.randn_like(y)
    got = torch.autograd.grad((y * gy).sum() + st.sum(), xs)
    ye, se, want = _reference_grads(xs, None, gy, torch.ones_like(st))
    assert_rel(y, ye, TOL[torch.float32], "y")
    assert_rel(st, se, TOL[torch.float32], "state")
    for a, b in zip(got, want):
        assert_rel(a, b, 5e-5, "grad")


@pytest.mark.parametrize("split", [1, 16, 17, 32, 33, 50])
def test_segments_with_the_state_carried_equal_one_pass(backend7, split):
    T = 66
    xs = [x.requires_grad_() for x in inputs(2, T, 2, 6, seed=4, device=backend7)]
    s0 = state(2, 2, 6, device=backend7).requires_grad_()
    y, st = rwkv_wkv.wkv7(*xs, s0)
    loss = (y.sin()).sum() + st.cos().sum()
    want = torch.autograd.grad(loss, [*xs, s0])
    y1, s1 = rwkv_wkv.wkv7(*[x[:, :split] for x in xs], s0)
    y2, s2 = rwkv_wkv.wkv7(*[x[:, split:] for x in xs], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s2, st, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(torch.cat([y1, y2], 1).sin().sum() + s2.cos().sum(), [*xs, s0])
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("BH", [(1, 1), (8, 16)])
def test_batch_times_heads_one_and_large(backend7, BH):
    B, H = BH
    xs = inputs(B, 20, H, 16, dtype=torch.float32, seed=B, device=backend7)
    y, st = rwkv_wkv.wkv7(*xs)
    ye, se = wkv7_naive(*[x.double().cpu() for x in xs])
    assert_rel(y, ye, TOL[torch.float32], "y")
    assert_rel(st, se, TOL[torch.float32], "state")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("w", [-30.0, -8.0, 3.0, 30.0, 95.0, 800.0])
def test_decays_near_one_and_near_zero(backend7, w, dtype):
    # w = -30: d = exp(-exp(-30)) = 1 - 1e-13 (no forgetting); w >= 3: d ~ 2e-9 .. exactly 0;
    # float32: exp(w) overflows from w = 88.7 (the SIMD kernels' own exp covers every range)
    xs = [x.requires_grad_() for x in inputs(1, 40, 2, 4, seed=6, decay=w, dtype=dtype, device=backend7)]
    y, st = rwkv_wkv.wkv7(*xs)
    got = torch.autograd.grad(y.sum() + st.sum(), xs)
    ye, se, want = _reference_grads(xs, None, torch.ones_like(y), torch.ones_like(st))
    if w > 709:  # exp(w) overflows: autograd's d exp(w) is 0 * inf; the slope's limit is 0
        want = (want[0], torch.zeros_like(want[1]), *want[2:])
    tol = 1e-10 if dtype == torch.float64 else TOL[torch.float32]
    assert_rel(y, ye, tol, "y")
    assert_rel(st, se, tol, "state")
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        assert_rel(a, b, 10 * tol, "grad")


def test_nan_propagates_forward_in_time_only(backend7):
    r, w, k, v, a, b = inputs(1, 10, 2, 4, seed=7, device=backend7)
    v = v.clone()
    v[0, 5, 1, 2] = float("nan")  # head 1 from t = 5 on; head 0 and t < 5 stay finite
    y, st = rwkv_wkv.wkv7(r, w, k, v, a, b)
    assert torch.isfinite(y[:, :5]).all() and torch.isfinite(y[:, :, 0]).all()
    assert torch.isnan(y[0, 5:, 1]).any(dim=-1).all()
    assert torch.isfinite(st[:, 0]).all() and torch.isnan(st[:, 1]).any()


def test_saved_and_recomputed_checkpoints_give_the_same_gradients(backend7):
    xs = inputs(2, 70, 2, 9, dtype=torch.float32, seed=8, device=backend7)
    s0 = state(2, 2, 9, dtype=torch.float32, device=backend7)
    y, st, ck = torch.ops.wkv.wkv7_forward(*xs, s0, True)
    assert ck.shape == (2, 2, 3, 9, 9)
    torch.testing.assert_close(ck[:, :, 0], s0, rtol=0, atol=0)  # the state before step 0
    y2, _, none = torch.ops.wkv.wkv7_forward(*xs, s0, False)
    assert none.shape == (2, 2, 0, 9, 9) and torch.equal(y, y2)
    gy, gs = torch.randn_like(y), torch.randn_like(st)
    saved = torch.ops.wkv.wkv7_backward(*xs, s0, gy, gs, ck)
    again = torch.ops.wkv.wkv7_backward(*xs, s0, gy, gs, None)
    empty = torch.ops.wkv.wkv7_backward(*xs, s0, gy, gs, none)
    for p, q, e in zip(saved, again, empty):
        assert torch.equal(p, q) and torch.equal(p, e)


def test_empty_batch_and_empty_sequence(backend7):
    s0 = state(2, 2, 4, device=backend7)
    xs = [x[:, :0].requires_grad_() for x in inputs(2, 3, 2, 4, device=backend7)]
    y, st = rwkv_wkv.wkv7(*xs, s0.requires_grad_())
    assert y.shape == (2, 0, 2, 4) and torch.equal(st, s0)
    (gs,) = torch.autograd.grad((st * 3).sum(), s0)
    assert torch.equal(gs, torch.full_like(gs, 3.0))
    xs = inputs(0, 5, 2, 4, device=backend7)
    y, st = rwkv_wkv.wkv7(*xs)
    assert y.shape == (0, 5, 2, 4) and st.shape == (0, 2, 4, 4)


def test_non_contiguous_inputs(backend7):
    xs = inputs(2, 12, 3, 8, seed=10, device=backend7)
    strided = [x.transpose(1, 2).contiguous().transpose(1, 2) for x in xs]
    assert not strided[0].is_contiguous()
    y, st = rwkv_wkv.wkv7(*strided)
    y2, st2 = rwkv_wkv.wkv7(*xs)
    assert torch.equal(y, y2) and torch.equal(st, st2)


def test_three_dimensional_inputs_with_a_head_size():
    xs = inputs(2, 9, 3, 4, seed=11)
    y4, s4 = rwkv_wkv.wkv7(*xs)
    flat = [x.reshape(2, 9, 12) for x in xs]
    y3, s3 = rwkv_wkv.wkv7(*flat, head_size=4)
    assert y3.shape == (2, 9, 12)
    torch.testing.assert_close(y3, y4.reshape(2, 9, 12), rtol=0, atol=0)
    torch.testing.assert_close(s3, s4, rtol=0, atol=0)
    y3s, _ = rwkv_wkv.wkv7(*flat, s4)  # the head size from the state
    assert y3s.shape == (2, 9, 12)
    with pytest.raises(ValueError, match="head_size"):
        rwkv_wkv.wkv7(*flat)
    with pytest.raises(ValueError, match="multiple of the head size 5"):
        rwkv_wkv.wkv7(*flat, head_size=5)


def test_rwkv_lm_drop_in_run_cuda_rwkv7g():
    """RUN_CUDA_RWKV7g(q, w, k, v, a, b): (B, T, C), zero initial state, y only, any T."""
    xs = [x.reshape(1, 21, 128) for x in inputs(1, 21, 2, 64, dtype=torch.bfloat16, seed=12)]
    y = rwkv_wkv.RUN_CUDA_RWKV7g(*xs)
    assert y.shape == (1, 21, 128) and y.dtype == torch.bfloat16
    want, _ = wkv7_naive(*[x.reshape(1, 21, 2, 64).double() for x in xs])
    assert_rel(y, want.reshape(1, 21, 128), TOL[torch.bfloat16])
    from rwkv_wkv.rwkv7.ops import run_cuda_rwkv7g

    assert run_cuda_rwkv7g is rwkv_wkv.RUN_CUDA_RWKV7g


def test_wkv7_function_apply():
    xs = [x.requires_grad_() for x in inputs(1, 5, 1, 3, seed=13)]
    y, st = rwkv_wkv.WKV7Function.apply(*xs)
    y2, st2 = rwkv_wkv.wkv7(*xs)
    assert torch.equal(y, y2) and torch.equal(st, st2)
    assert all(g is not None for g in torch.autograd.grad(y.sum(), xs))


def test_fla_convention_round_trip_through_the_op():
    """fla's chunk_rwkv7 takes the log-decay and a (B, H, K, V) state: the converters map ours
    onto it, and the op continues from a converted state exactly."""
    r, w, k, v, a, b = inputs(1, 8, 2, 4, seed=14)
    s0 = state(1, 2, 4)
    w_log, s_fla = to_fla(w, s0)
    torch.testing.assert_close(torch.exp(w_log), torch.exp(-torch.exp(w)))
    w_back, s_back = from_fla(w_log, s_fla)
    y, st = rwkv_wkv.wkv7(r, w_back, k, v, a, b, s_back)
    y0, st0 = rwkv_wkv.wkv7(r, w, k, v, a, b, s0)
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(st, st0, rtol=1e-12, atol=1e-12)


def test_opcheck_forward_and_backward():
    from torch.library import opcheck

    xs = inputs(2, 35, 2, 5, dtype=torch.float32, seed=15)
    s0 = state(2, 2, 5, dtype=torch.float32)
    for save in (False, True):
        opcheck(torch.ops.wkv.wkv7_forward.default, (*xs, s0, save))
    opcheck(torch.ops.wkv.wkv7_forward.default, (*[x.requires_grad_() for x in xs], s0.requires_grad_(), False))
    y, st, ck = torch.ops.wkv.wkv7_forward(*[x.detach() for x in xs], s0.detach(), True)
    args = (*[x.detach() for x in xs], s0.detach(), torch.randn_like(y), torch.randn_like(st), ck)
    opcheck(torch.ops.wkv.wkv7_backward.default, args)


def test_compile_fullgraph_dynamic_forward_and_backward():
    torch._dynamo.reset()
    f = torch.compile(lambda *a: rwkv_wkv.wkv7(*a), fullgraph=True, dynamic=True)
    for T in (7, 40):
        xs = [x.requires_grad_() for x in inputs(2, T, 2, 4, dtype=torch.float32, seed=T)]
        s0 = state(2, 2, 4, dtype=torch.float32).requires_grad_()
        y, st = f(*xs, s0)
        got = torch.autograd.grad(y.sum() + st.sum(), [*xs, s0])
        y2, st2 = rwkv_wkv.wkv7(*xs, s0)
        want = torch.autograd.grad(y2.sum() + st2.sum(), [*xs, s0])
        torch.testing.assert_close(y, y2)
        for p, q in zip(got, want):
            torch.testing.assert_close(p, q)
