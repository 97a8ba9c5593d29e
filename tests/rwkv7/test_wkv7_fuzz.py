"""Property fuzzing of the RWKV-7 op (hypothesis): random shapes, dtypes, backends, states and
input scales against the float64 naive loop, forward and backward.

Short profile by default (CI); the long profile runs >= 10,000 cases:
    RWKV_WKV_FUZZ=long python -m pytest -q tests/rwkv7/test_wkv7_fuzz.py
"""

from __future__ import annotations

import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from wkv7_helpers import BACKENDS7, TOL, assert_rel, select7  # noqa: E402

import rwkv_wkv  # noqa: E402
from rwkv_wkv.rwkv7.reference import wkv7_naive  # noqa: E402

LONG = os.environ.get("RWKV_WKV_FUZZ") == "long"
PROFILE = settings(max_examples=10000 if LONG else 60, deadline=None, derandomize=not LONG, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]


@st.composite
def cases(draw):
    return dict(
        B=draw(st.integers(1, 3)), T=draw(st.integers(0, 70)), H=draw(st.integers(1, 3)),
        N=draw(st.integers(1, 40)), dtype=draw(st.sampled_from(DTYPES)),
        backend=draw(st.sampled_from([b for b in BACKENDS7 if b != "cuda"])),
        with_state=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
        # decays from almost none (w = -12) to almost total (w = 2.5); key scales up to 3
        w_lo=draw(st.floats(-12.0, 0.0)), w_hi=draw(st.floats(0.0, 2.5)), scale=draw(st.floats(0.1, 3.0)),
    )


@PROFILE
@given(cases())
def test_fuzz_matches_the_naive_loop(c):
    B, T, H, N, dtype = c["B"], c["T"], c["H"], c["N"], c["dtype"]
    g = torch.Generator().manual_seed(c["seed"])
    r, k, v = (c["scale"] * torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(3))
    w = c["w_lo"] + (c["w_hi"] - c["w_lo"]) * torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g, dtype=torch.float64), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    xs = [x.to(dtype) for x in (r, w, k, v, a, b)]
    math = torch.float64 if dtype == torch.float64 else torch.float32
    s0 = torch.randn(B, H, N, N, generator=g, dtype=torch.float64).to(math) if c["with_state"] else None
    select7(c["backend"])
    try:
        prim = [x.clone().requires_grad_() for x in xs]
        s = None if s0 is None else s0.clone().requires_grad_()
        y, st_ = rwkv_wkv.wkv7(*prim, s)
        gy = torch.randn(y.shape, generator=g, dtype=torch.float64)
        gs = torch.randn(st_.shape, generator=g, dtype=torch.float64)
        got = torch.autograd.grad((y * gy.to(dtype)).sum() + (st_ * gs.to(math)).sum(),
                                  prim + ([s] if s is not None else []), allow_unused=True)
    finally:
        rwkv_wkv.cpu_isa("auto")
    ref = [x.double().requires_grad_() for x in xs]
    rs = None if s0 is None else s0.double().requires_grad_()
    ye, se = wkv7_naive(*ref, rs)
    loss = (ye * gy.to(dtype).double()).sum() + (se * gs.to(math).double()).sum()
    wrt = ref + ([rs] if rs is not None else [])
    # (T = 0 without a state: the reference's outputs are constants, every gradient zero)
    want = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt)
    # 16-bit: the recurrence over up to 70 steps compounds the inputs' rounding
    tol = TOL[dtype] * (3 if dtype in (torch.bfloat16, torch.float16) else 1)
    assert_rel(y, ye, tol, "y")
    assert_rel(st_, se, tol, "state")
    for i, (p, q) in enumerate(zip(got, want)):
        p = torch.zeros_like(ref[i] if i < 6 else rs) if p is None else p
        q = torch.zeros_like(p, dtype=torch.float64) if q is None else q
        assert_rel(p, q, 8 * tol, f"grad {i}")
