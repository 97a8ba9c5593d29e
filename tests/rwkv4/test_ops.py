"""Every op against the float64 closed form, across backends, shapes and dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import exact_cached, make_inputs
from rwkv_wkv.reference import wkv_exact, wkv_naive

import rwkv_wkv

# Shape families: T=1, T=2, odd C, C=1, B*C not a multiple of 32, long T, the seed's shape,
# C that is not a multiple of the vector width and spans several vectors.
SHAPES = [
    (1, 1, 1),
    (2, 1, 5),
    (1, 2, 3),
    (3, 7, 13),
    (1, 5, 1),
    (3, 11, 7),
    (2, 9, 37),
    (1, 5000, 3),
    (1, 1024, 512),
]

# Absolute tolerance relative to max|v| (y is a convex combination of v).
TOL = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.bfloat16: 1.6e-2,  # output rounding to 8 mantissa bits dominates
    torch.float16: 2e-3,
}
DTYPES = list(TOL)


def _run(op, td, tf, k, v):
    """Runs one of the four entry points, returning y."""
    B, T, C = k.shape
    if op == "wkv":
        return rwkv_wkv.wkv(td, tf, k, v)
    if op == "wkv_with_state":
        return rwkv_wkv.wkv_with_state(td, tf, k, v, None)[0]
    if op == "WKVFunction":
        return rwkv_wkv.WKVFunction.apply(B, T, C, td, tf, k, v)
    if op == "legacy":
        math = torch.float64 if k.dtype == torch.float64 else torch.float32
        y = torch.empty_like(k)
        torch.ops.wkv.forward(B, T, C, -torch.exp(td.to(math)), tf.to(math), k, v, y)
        return y
    raise AssertionError(op)


OPS = ["wkv", "wkv_with_state", "WKVFunction", "legacy"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_forward_matches_exact(backend, shape, dtype):
    B, T, C = shape
    td, tf, k, v = make_inputs(B, T, C, seed=1)
    ref = exact_cached(B, T, C, 1, "normal", str(dtype).split(".")[1])
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    args = (td.to(device=backend, dtype=pdtype),
            tf.to(device=backend, dtype=pdtype),
            k.to(device=backend, dtype=dtype), v.to(device=backend, dtype=dtype))
    scale = v.abs().max().item()
    ops = OPS if shape[1] < 5000 and shape != (1, 1024, 512) else ["wkv", "legacy"]
    for op in ops:
        y = _run(op, *args)
        assert y.dtype == dtype and y.shape == (B, T, C) and y.device.type == backend
        err = (y.double().cpu() - ref).abs().max().item()
        assert err <= TOL[dtype] * scale, f"{op}: max error {err:.3g} > {TOL[dtype] * scale:.3g}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_state_matches_exact(backend, dtype):
    """The returned state, and continuing from a given state, against the closed form."""
    B, T, C = 2, 40, 19
    td, tf, k, v = make_inputs(B, T + 9, C, seed=2)
    _, s0 = wkv_exact(td, tf, k[:, :9], v[:, :9], return_state=True)
    y_ref, s_ref = wkv_exact(td, tf, k[:, 9:], v[:, 9:], state=s0, return_state=True)
    dev = dict(device=backend, dtype=dtype)
    y, s = rwkv_wkv.wkv_with_state(td.to(**dev), tf.to(**dev), k[:, 9:].to(**dev), v[:, 9:].to(**dev), s0.to(**dev))
    assert s.dtype == dtype and s.shape == (B, 3, C)
    tol = TOL[dtype]
    assert (y.double().cpu() - y_ref).abs().max() <= tol * 10
    # aa, bb relative to bb; pp absolutely
    s = s.double().cpu()
    assert torch.allclose(s[:, 2], s_ref[:, 2], rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-5)
    assert torch.allclose(s[:, :2], s_ref[:, :2], rtol=tol * 10, atol=tol * 10)


def test_naive_matches_exact():
    td, tf, k, v = make_inputs(2, 30, 9, seed=3)
    assert torch.allclose(wkv_naive(td, tf, k, v), wkv_exact(td, tf, k, v), atol=1e-12)
    assert wkv_naive(td.float(), tf.float(), k.float(), v.float()).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_extreme_inputs(backend, dtype):
    """k in [-1000, 1000], time_decay and time_first in [-10, 10]: finite and exact."""
    B, T, C = 2, 300, 37
    td, tf, k, v = make_inputs(B, T, C, seed=4, kind="extreme")
    pd = dict(device=backend, dtype=dtype)
    args = (td.to(**pd), tf.to(**pd), k.to(**pd).requires_grad_(), v.to(**pd).requires_grad_())
    y = rwkv_wkv.wkv(*args)
    assert torch.isfinite(y).all()
    ref = wkv_exact(*[a.detach().double().cpu() for a in args])
    # float32 carries the running exponent pp (|pp| ~ 1000, ulp 6e-5) through T additions of w
    tol = 1e-9 if dtype == torch.float64 else 2e-3
    assert (y.double().cpu() - ref).abs().max() <= tol * v.abs().max()
    y.square().sum().backward()
    assert torch.isfinite(args[2].grad).all() and torch.isfinite(args[3].grad).all()


def test_extreme_gradients_match_exact():
    """float64 gradients at extreme inputs against autograd through the closed form."""
    B, T, C = 1, 40, 8
    td, tf, k, v = make_inputs(B, T, C, seed=5, kind="extreme")
    gy = torch.randn(B, T, C, dtype=torch.float64)
    a = [x.clone().requires_grad_() for x in (td, tf, k, v)]
    (rwkv_wkv.wkv(*a) * gy).sum().backward()
    r = [x.clone().requires_grad_() for x in (td, tf, k, v)]
    (wkv_exact(*r) * gy).sum().backward()
    for x, y, name in zip(a, r, ["time_decay", "time_first", "k", "v"]):
        assert torch.isfinite(x.grad).all(), name
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_output_within_prefix_range(backend):
    """y_t is a convex combination of v_0..v_t: it lies within their min and max."""
    B, T, C = 3, 200, 33
    td, tf, k, v = make_inputs(B, T, C, seed=6)
    d = dict(device=backend, dtype=torch.float32)
    y = rwkv_wkv.wkv(td.to(**d), tf.to(**d), k.to(**d), v.to(**d)).double().cpu()
    lo = torch.cummin(v, dim=1).values
    hi = torch.cummax(v, dim=1).values
    eps = 1e-5
    assert (y >= lo - eps).all() and (y <= hi + eps).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_gradients_match_exact(backend, dtype):
    """Gradients of every input against autograd through the closed form (float64)."""
    B, T, C = 2, 33, 21
    td, tf, k, v = make_inputs(B, T, C, seed=7)
    gy = torch.randn(B, T, C, dtype=torch.float64)
    d = dict(device=backend)
    a = [td.float().to(**d), tf.float().to(**d), k.to(dtype).to(**d), v.to(dtype).to(**d)]
    a = [x.requires_grad_() for x in a]
    (rwkv_wkv.wkv(*a).double() * gy.to(**d)).sum().backward()
    r = [x.detach().double().cpu().requires_grad_() for x in a]
    (wkv_exact(*r) * gy).sum().backward()
    tol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    for x, y, name in zip(a, r, ["time_decay", "time_first", "k", "v"]):
        err = (x.grad.double().cpu() - y.grad).abs().max().item()
        scale = y.grad.abs().max().item()
        assert err <= tol * scale, f"{name}: {err:.3g} > {tol * scale:.3g}"
        assert x.grad.dtype == x.dtype


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_split_state_equivalence(backend, dtype):
    """One call over T == two calls passing the state: values and gradients."""
    B, T, C = 2, 50, 23
    td, tf, k, v = make_inputs(B, T, C, seed=8)
    gy = torch.randn(B, T, C, dtype=torch.float64)
    d = dict(device=backend, dtype=dtype)

    def grads(split):
        a = [x.to(**d).requires_grad_() for x in (td, tf, k, v)]
        if split is None:
            y, _ = rwkv_wkv.wkv_with_state(*a)
        else:
            y1, s = rwkv_wkv.wkv_with_state(a[0], a[1], a[2][:, :split], a[3][:, :split])
            y2, _ = rwkv_wkv.wkv_with_state(a[0], a[1], a[2][:, split:], a[3][:, split:], s)
            y = torch.cat([y1, y2], dim=1)
        (y.double() * gy.to(backend)).sum().backward()
        return [y.detach()] + [x.grad for x in a]

    whole = grads(None)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for split in (1, 17, 49):
        for x, y, name in zip(grads(split), whole, ["y", "time_decay", "time_first", "k", "v"]):
            torch.testing.assert_close(x, y, **tol, msg=f"split {split}: {name}")


def test_state_gradient_through_segments_matches_exact(backend):
    """Truncated BPTT is exact: the gradient reaching an input state matches the closed form."""
    B, T, C = 2, 20, 7
    td, tf, k, v = make_inputs(B, 2 * T, C, seed=9)
    d = dict(device=backend, dtype=torch.float64)
    _, s0 = wkv_exact(td, tf, k[:, :T], v[:, :T], return_state=True)
    s_ker = s0.to(**d).clone().requires_grad_()
    s_ref = s0.clone().requires_grad_()
    gy = torch.randn(B, T, C, dtype=torch.float64)
    y, _ = rwkv_wkv.wkv_with_state(td.to(**d), tf.to(**d), k[:, T:].to(**d), v[:, T:].to(**d), s_ker)
    (y * gy.to(backend)).sum().backward()
    (wkv_exact(td, tf, k[:, T:], v[:, T:], state=s_ref) * gy).sum().backward()
    torch.testing.assert_close(s_ker.grad.cpu(), s_ref.grad, rtol=1e-8, atol=1e-10)


def test_empty_state_helper(device):
    s = rwkv_wkv.empty_state(2, 5, device=device)
    assert s.shape == (2, 3, 5) and s.dtype == torch.float32
    td, tf, k, v = [x.float().to(device) for x in make_inputs(2, 6, 5, seed=10)]
    y1 = rwkv_wkv.wkv(td, tf, k, v)
    y2, _ = rwkv_wkv.wkv_with_state(td, tf, k, v, s)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)


def test_non_contiguous_inputs_are_accepted(backend):
    """The functional ops take any strides (they copy); results equal the contiguous ones."""
    B, T, C = 2, 12, 9
    td, tf, k, v = [x.float().to(backend) for x in make_inputs(B, T, C, seed=11)]
    kt = k.transpose(0, 1).contiguous().transpose(0, 1)  # same values, permuted strides
    vt = torch.stack([v, v], dim=-1)[..., 0]  # non-contiguous view with v's values
    assert not kt.is_contiguous() and not vt.is_contiguous()
    tdt = torch.stack([td, td], 1)[:, 0]
    assert not tdt.is_contiguous()
    torch.testing.assert_close(rwkv_wkv.wkv(tdt, tf, kt, vt), rwkv_wkv.wkv(td, tf, k, v), rtol=0, atol=0)


def test_build_info():
    info = rwkv_wkv.build_info()
    assert isinstance(info["cuda"], bool) and isinstance(info["openmp"], bool)
    # the CPU kernels' threads are the library's own pool (csrc/common/parallel.h), not OpenMP's
    assert info["threads"] == "pool" and not info["openmp"]
    # The torch it was compiled against; on the stable ABI it runs under any torch >= abi_target.
    assert info["torch"] and info["torch_runtime"] == torch.__version__
    assert info["cpu_isa"] in info["cpu_kernels"]


def test_cpu_isa_rejects_unknown():
    with pytest.raises(ValueError, match="isa must be one of"):
        rwkv_wkv.cpu_isa("sse9")
    assert rwkv_wkv.cpu_isa() in ("avx512", "avx2", "scalar")


def test_threads_agree():
    """The result does not depend on how channels are split across threads."""
    td, tf, k, v = [x.float() for x in make_inputs(3, 40, 100, seed=12)]
    n = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            outs.append(rwkv_wkv.wkv(td, tf, k, v))
    finally:
        torch.set_num_threads(n)
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=0)


def test_large_gradients_match_float64(backend):
    """Shapes past 1 MiB take the streaming-store paths and split rows across threads; their
    float32 gradients must match the float64 kernel (itself gradchecked)."""
    B, T, C = 1, 1024, 512
    td, tf, k, v = make_inputs(B, T, C, seed=13)
    gy = torch.randn(B, T, C, dtype=torch.float64, generator=torch.Generator().manual_seed(14))

    def grads(dtype, device):
        a = [x.to(device=device, dtype=dtype).requires_grad_() for x in (td, tf, k, v)]
        y = rwkv_wkv.wkv(*a)
        y.backward(gy.to(device=device, dtype=dtype))
        return [y.detach().double().cpu()] + [x.grad.double().cpu() for x in a]

    got = grads(torch.float32, backend)
    rwkv_wkv.cpu_isa("scalar")
    try:
        ref = grads(torch.float64, "cpu")
    finally:
        rwkv_wkv.cpu_isa("auto")
    for g, r, name in zip(got, ref, ["y", "time_decay", "time_first", "k", "v"]):
        err = (g - r).abs().max().item()
        assert err <= 1e-4 * r.abs().max().item(), f"{name}: {err:.3g}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_16bit_sequences_round_like_torch(backend, dtype):
    """16-bit k, v are widened in the kernel and y is rounded to nearest even on the way out:
    the result is bit-identical to computing on the widened float32 inputs and letting torch
    round. v spans normal and (for float16) subnormal magnitudes, negative zero included."""
    B, T, C = 2, 37, 45  # vector bodies and scalar tails
    td, tf, k, v = make_inputs(B, T, C, seed=15)
    scale = torch.logspace(-9, 2, C, dtype=torch.float64)
    v = (v * scale).to(dtype)
    v[0, 0, 0] = -0.0
    k = k.to(dtype)
    td, tf = td.float().to(backend), tf.float().to(backend)
    k, v = k.to(backend), v.to(backend)
    y16 = rwkv_wkv.wkv(td, tf, k, v)
    y32 = rwkv_wkv.wkv(td, tf, k.float(), v.float())
    assert y16.dtype == dtype
    assert torch.equal(y16.view(torch.int16), y32.to(dtype).view(torch.int16))
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(16)).to(backend)
    g16 = torch.ops.wkv.wkv_backward(td, tf, k, v, None, gy.to(dtype), None)
    g32 = torch.ops.wkv.wkv_backward(td, tf, k.float(), v.float(), None, gy.to(dtype).float(), None)
    for a, b in zip(g16[2:4], g32[2:4]):
        assert torch.equal(a.view(torch.int16), b.to(dtype).view(torch.int16))
