"""Property fuzzing of the ops (hypothesis).

Short profile by default (CI); the long profile runs >= 10,000 cases:
    RWKV_WKV_FUZZ=long python -m pytest -q tests/rwkv4/test_fuzz.py

NaN rule (what the math says): y[b, s, c] depends on k[b, t, c] and v[b, t, c] for t <= s, on
time_first[c] at every s, on time_decay[c] for s >= 1 (and at s = 0 only through a non-empty
input state). A NaN input makes exactly the outputs that depend on it NaN; every other output
stays finite. +inf in k is an infinitely heavy token (y = its v until a heavier one arrives).
"""

from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from conftest import BACKENDS, EMULATED, reset_backend, select_backend  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from rwkv_wkv.reference import wkv_exact  # noqa: E402

import rwkv_wkv  # noqa: E402

LONG = os.environ.get("RWKV_WKV_FUZZ") == "long"
N = 4000 if LONG else 60  # per test below; the long profile totals > 10,000 cases
PROFILE = settings(max_examples=N, deadline=None, derandomize=not LONG, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float64: 1e-9, torch.float32: 3e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


@st.composite
def cases(draw, allow_state=True):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 40))
    C = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(DTYPES))
    regime = draw(st.sampled_from(["normal", "extreme", "mixed"]))
    seed = draw(st.integers(0, 2**31 - 1))
    contiguous = draw(st.booleans())
    with_state = allow_state and draw(st.booleans())
    backend = draw(st.sampled_from(BACKENDS))
    return dict(B=B, T=T, C=C, dtype=dtype, regime=regime, seed=seed, contiguous=contiguous,
                with_state=with_state, backend=backend)


def build(c):
    g = torch.Generator().manual_seed(c["seed"])
    B, T, C, f64 = c["B"], c["T"], c["C"], torch.float64
    if c["regime"] == "extreme":
        td = torch.rand(C, generator=g, dtype=f64) * 20 - 10
        tf = torch.rand(C, generator=g, dtype=f64) * 20 - 10
        k = torch.rand(B, T, C, generator=g, dtype=f64) * 2000 - 1000
    elif c["regime"] == "mixed":
        td = torch.randn(C, generator=g, dtype=f64) * 4
        tf = torch.randn(C, generator=g, dtype=f64) * 4
        k = torch.randn(B, T, C, generator=g, dtype=f64) * 30
    else:
        td = torch.randn(C, generator=g, dtype=f64)
        tf = torch.randn(C, generator=g, dtype=f64)
        k = torch.randn(B, T, C, generator=g, dtype=f64)
    v = torch.randn(B, T, C, generator=g, dtype=f64)
    if c["dtype"] == torch.float16:  # keep v and k inside float16's range
        k = k.clamp(-60000, 60000)
    math = torch.float64 if c["dtype"] == torch.float64 else torch.float32
    state = None
    if c["with_state"]:
        bb = torch.rand(B, C, generator=g, dtype=f64) * 5
        aa = bb * (torch.rand(B, C, generator=g, dtype=f64) * 4 - 2)
        pp = torch.randn(B, C, generator=g, dtype=f64) * 20
        state = torch.stack([aa, bb, pp], 1).to(math)
    pd = torch.float64 if c["dtype"] == torch.float64 else torch.float32
    td, tf = td.to(pd), tf.to(pd)
    k, v = k.to(c["dtype"]), v.to(c["dtype"])
    return td, tf, k, v, state


def place(x, c):
    """Moves to the backend; non-contiguous copies where asked."""
    dev = "cuda" if c["backend"].startswith("cuda") else "cpu"
    x = x.to(dev)
    if not c["contiguous"] and x.dim() >= 1:
        x = torch.stack([x, x], dim=-1)[..., 0]
    return x


@PROFILE
@given(cases())
def test_fuzz_matches_exact(c):
    select_backend(c["backend"])
    try:
        td, tf, k, v, state = build(c)
        args = [place(x, c) for x in (td, tf, k, v)]
        st_ = None if state is None else place(state, c)
        y, new_state = rwkv_wkv.wkv_with_state(*args, st_)
        assert y.dtype == c["dtype"] and y.shape == k.shape
        assert torch.isfinite(y).all(), "finite input gave a non-finite output"
        assert torch.isfinite(new_state).all()
        ref = wkv_exact(td, tf, k, v, state)
        tol = TOL[c["dtype"]] * (100 if c["regime"] == "extreme" and c["dtype"] == torch.float32 else 1)
        if c["regime"] == "extreme" and c["dtype"] == torch.float64:
            tol = 1e-7
        err = (y.double().cpu() - ref).abs().max().item()
        assert err <= tol * max(1.0, v.double().abs().max().item()), f"error {err:.3g}"
    finally:
        reset_backend()


@PROFILE
@given(cases(allow_state=False), st.data())
def test_fuzz_nan_propagates_only_where_the_math_says(c, data):
    select_backend(c["backend"])
    try:
        td, tf, k, v, _ = build(c)
        B, T, C = k.shape
        which = data.draw(st.sampled_from(["k", "v", "time_first", "time_decay"]))
        b, t, ch = data.draw(st.integers(0, B - 1)), data.draw(st.integers(0, T - 1)), data.draw(st.integers(0, C - 1))
        expect = torch.zeros(B, T, C, dtype=torch.bool)
        if which in ("k", "v"):
            (k if which == "k" else v)[b, t, ch] = float("nan")
            expect[b, t:, ch] = True
        elif which == "time_first":
            tf[ch] = float("nan")
            expect[:, :, ch] = True
        else:
            td[ch] = float("nan")
            expect[:, 1:, ch] = True
        args = [place(x, c) for x in (td, tf, k, v)]
        y = rwkv_wkv.wkv(*args).cpu()
        assert torch.equal(torch.isnan(y), expect), f"NaN in {which} at {(b, t, ch)}"
    finally:
        reset_backend()


def _host_decay(td):
    """-exp(td) computed as the CUDA kernels' host code does: the C library's expf / exp."""
    import ctypes
    import ctypes.util
    import math as pymath

    if td.dtype == torch.float64:
        return -torch.tensor([pymath.exp(x) for x in td.tolist()], dtype=torch.float64)
    libm = ctypes.CDLL(ctypes.util.find_library("m"))
    libm.expf.restype = ctypes.c_float
    libm.expf.argtypes = [ctypes.c_float]
    return -torch.tensor([libm.expf(x) for x in td.tolist()], dtype=torch.float32)


@PROFILE
@given(cases(allow_state=False))
def test_fuzz_functional_and_seed_ops_agree(c):
    """wkv.wkv_forward / wkv_backward and RWKV-LM's wkv.forward / wkv.backward give the same
    values and gradients (same kernel, two front doors)."""
    select_backend(c["backend"])
    try:
        td, tf, k, v, _ = build(c)
        dev = "cuda" if c["backend"].startswith("cuda") else "cpu"
        td, tf, k, v = (x.to(dev) for x in (td, tf, k, v))
        B, T, C = k.shape
        math = torch.float64 if k.dtype == torch.float64 else torch.float32
        gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(c["seed"] + 1)).to(dev, k.dtype)
        y1, _, _ = torch.ops.wkv.wkv_forward(td, tf, k, v, None)
        # The functional door forms w = -exp(time_decay) inside the kernel: the SIMD CPU kernels
        # with torch.exp, the CUDA kernels with the C library's exp (on the CPU emulation glibc's,
        # reproduced exactly here; on a GPU the device's, which torch.exp on CUDA also calls).
        w = _host_decay(td.to(math)) if c["backend"] in EMULATED else -torch.exp(td.to(math))
        y2 = torch.empty_like(k)
        torch.ops.wkv.forward(B, T, C, w, tf.to(math), k, v, y2)
        g_td, g_tf, gk1, gv1, _ = torch.ops.wkv.wkv_backward(td, tf, k, v, None, gy, None)
        gw, gu = torch.zeros(B, C, dtype=math, device=dev), torch.zeros(B, C, dtype=math, device=dev)
        gk2, gv2 = torch.empty_like(k), torch.empty_like(k)
        torch.ops.wkv.backward(B, T, C, w, tf.to(math), k, v, gy, gw, gu, gk2, gv2)
        param_tol = dict(rtol=1e-6, atol=1e-6)
        if c["backend"].startswith("cuda"):
            # torch.exp and the kernel's expf should be the same device function; in case they
            # differ by an ulp of w, the doors agree to that rounding (one ulp for 16-bit outputs;
            # the decay's gradient is the most sensitive: extreme inputs amplify it).
            rtol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[k.dtype]
            tol = dict(rtol=rtol, atol=1e-12 if math == torch.float64 else 1e-6)
            for a, b in ((y1, y2), (gk1, gk2), (gv1, gv2)):
                torch.testing.assert_close(a.to(math), b.to(math), **tol, equal_nan=True)
            param_tol = dict(rtol=1e-4, atol=1e-6) if math == torch.float32 else param_tol
        else:
            assert torch.equal(y1, y2)
            assert torch.equal(gk1, gk2) and torch.equal(gv1, gv2)
        torch.testing.assert_close(gw.sum(0).to(td.dtype), g_td, **param_tol, equal_nan=True)
        torch.testing.assert_close(gu.sum(0).to(tf.dtype), g_tf, **param_tol, equal_nan=True)
    finally:
        reset_backend()
