"""The CUDA kernels' T-chunked passes, run on the CPU through their emulation, and the
forward's checkpoints (csrc/rwkv4/wkv_chunked.h, csrc/rwkv4/wkv_cuda_driver.h, csrc/rwkv4/cpu/wkv_emulate.cpp).

Every other op test also runs on the emulated backends (conftest.BACKENDS); this file aims at
the chunk arithmetic itself: chunk and segment boundaries (T % chunk != 0, one chunk, chunk > T),
odd B * C, state in and out with gradients, every dtype, and the chunk-length plan.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs, reset_backend
from rwkv_wkv.reference import EMPTY_EXPONENT, wkv_exact

import rwkv_wkv

# T around the 32-step segments and 96-step chunks; chunk lengths from one segment to one chunk.
TS = [1, 31, 32, 33, 64, 95, 96, 97, 200]
CHUNKS = ["serial", 32, 64, 96]


def _run(isa, chunk, td, tf, k, v, state, gy, gstate):
    """Values and gradients of wkv_with_state (the returned state feeds the loss too)."""
    rwkv_wkv.cpu_isa(isa)
    rwkv_wkv.cuda_chunk_length(chunk)
    try:
        leaves = [x.clone().requires_grad_() for x in (td, tf, k, v)]
        s = None if state is None else state.clone().requires_grad_()
        y, s_out = rwkv_wkv.wkv_with_state(*leaves, s)
        if gstate is None:
            y.backward(gy.to(y.dtype))
        else:
            torch.autograd.backward([y, s_out], [gy.to(y.dtype), gstate])
        grads = [x.grad for x in leaves] + ([s.grad] if s is not None else [])
        return [y.detach(), s_out.detach()] + grads
    finally:
        reset_backend()


@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("chunk", CHUNKS, ids=str)
@pytest.mark.parametrize("with_state", [False, True])
def test_emulated_float64_equals_cpu_kernel(T, chunk, with_state):
    """float64: the emulated CUDA passes agree with the CPU kernel to rounding, values and every
    gradient, input state and returned state included. B * C = 15 (odd, not a multiple of 32)."""
    B, C = 3, 5
    td, tf, k, v = make_inputs(B, T + 7, C, seed=T)
    state = None
    if with_state:
        _, state = wkv_exact(td, tf, k[:, :7], v[:, :7], return_state=True)
    k, v = k[:, 7:].contiguous(), v[:, 7:].contiguous()
    g = torch.Generator().manual_seed(1)
    gy = torch.randn(B, T, C, generator=g, dtype=torch.float64)
    gstate = torch.randn(B, 3, C, generator=g, dtype=torch.float64)
    got = _run("cuda_emulation", chunk, td, tf, k, v, state, gy, gstate)
    ref = _run("scalar", "auto", td, tf, k, v, state, gy, gstate)
    names = ["y", "state_out", "time_decay", "time_first", "k", "v", "state"]
    for a, b, name in zip(got, ref, names):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"T={T} chunk={chunk}: {name}")
    y_exact = wkv_exact(td, tf, k, v, state=state)
    assert (got[0] - y_exact).abs().max() <= 1e-10 * v.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("chunk", CHUNKS, ids=str)
def test_emulated_dtypes_match_exact(dtype, chunk):
    """Every input dtype through the chunked passes, against the float64 closed form."""
    B, T, C = 2, 130, 21
    td, tf, k, v = make_inputs(B, T, C, seed=3)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kd, vd = k.to(dtype), v.to(dtype)
    got = _run("cuda_emulation", chunk, td.float(), tf.float(), kd, vd, None, gy, None)
    r = [x.double().requires_grad_() for x in (td.float(), tf.float(), kd, vd)]
    y = wkv_exact(*r)
    (y * gy).sum().backward()
    tol = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[dtype]
    gtol = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    assert got[0].dtype == dtype
    assert (got[0].double() - y.detach()).abs().max() <= tol * v.abs().max()
    for a, b, name in zip(got[2:6], [x.grad for x in r], ["time_decay", "time_first", "k", "v"]):
        err = (a.double() - b).abs().max().item()
        assert err <= gtol * b.abs().max().item(), f"{name}: {err:.3g}"


def test_emulated_extreme_inputs():
    """k in [-1000, 1000], decays and bonuses in [-10, 10], across chunk boundaries (float32)."""
    B, T, C = 2, 300, 37
    td, tf, k, v = make_inputs(B, T, C, seed=4, kind="extreme")
    ref = wkv_exact(td, tf, k, v)
    rwkv_wkv.cpu_isa("cuda_emulation")
    try:
        for chunk in CHUNKS:
            rwkv_wkv.cuda_chunk_length(chunk)
            y = rwkv_wkv.wkv(td.float(), tf.float(), k.float(), v.float())
            assert torch.isfinite(y).all()
            assert (y.double() - ref).abs().max() <= 2e-3 * v.abs().max(), chunk
    finally:
        reset_backend()


def test_legacy_backward_accumulates_on_emulation():
    """RWKV-LM's contract: gw, gu are (B, C) and accumulated into (the reduce pass's += mode)."""
    B, T, C = 2, 70, 9
    td, tf, k, v = [x.float() for x in make_inputs(B, T, C, seed=5)]
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(5))
    w = -torch.exp(td)

    def grads(isa):
        rwkv_wkv.cpu_isa(isa)
        rwkv_wkv.cuda_chunk_length(32)
        try:
            gw, gu = torch.ones(B, C), torch.ones(B, C)  # accumulated into: the result includes the 1
            gk, gv = torch.empty_like(k), torch.empty_like(k)
            torch.ops.wkv.backward(B, T, C, w, tf, k, v, gy, gw, gu, gk, gv)
            return gw, gu, gk, gv
        finally:
            reset_backend()

    for a, b, name in zip(grads("cuda_emulation"), grads("scalar"), ["gw", "gu", "gk", "gv"]):
        # float32 sums in another order (per chunk, then over chunks): relative to the largest
        err = (a - b).abs().max().item()
        assert err <= 1e-5 * b.abs().max().item(), f"{name}: {err:.3g}"


# ---- checkpoints ----------------------------------------------------------------------------

@pytest.mark.parametrize("isa", ["auto", "cuda_emulation"])
def test_checkpoints_are_the_states_every_32_steps(isa):
    B, T, C = 2, 100, 6
    td, tf, k, v = make_inputs(B, T, C, seed=6)
    rwkv_wkv.cpu_isa(isa)
    rwkv_wkv.cuda_chunk_length(64)
    try:
        y, s, ck = torch.ops.wkv.wkv_forward(td, tf, k, v, None, True)
        _, _, none = torch.ops.wkv.wkv_forward(td, tf, k, v, None)
    finally:
        reset_backend()
    assert ck.shape == (B, 4, 3, C) and none.shape == (B, 0, 3, C)
    for j in range(4):
        if j == 0:
            assert (ck[:, 0, :2] == 0).all() and (ck[:, 0, 2] == torch.tensor(EMPTY_EXPONENT).float()).all()
            continue
        _, ref = wkv_exact(td, tf, k[:, : 32 * j], v[:, : 32 * j], return_state=True)
        # (aa, bb, pp) is a representation: compare the sums it stands for, relative to bb
        scale = torch.exp(ck[:, j, 2] - ref[:, 2])
        torch.testing.assert_close(ck[:, j, :2] * scale[:, None], ref[:, :2], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("isa", ["auto", "scalar", "cuda_emulation"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_backward_from_saved_checkpoints_equals_recompute(isa, dtype):
    """The backward given the forward's checkpoints is bit-identical to the one that recomputes
    them (same kernel), with and without state."""
    B, T, C = 3, 77, 19
    td, tf, k, v = [x.to(dtype) for x in make_inputs(B, T, C, seed=7)]
    state = wkv_exact(td.double(), tf.double(), k.double(), v.double(), return_state=True)[1].to(dtype)
    gy, gs = torch.randn_like(k), torch.randn_like(state)
    rwkv_wkv.cpu_isa(isa)
    rwkv_wkv.cuda_chunk_length(32)
    try:
        for st in (None, state):
            _, _, ck = torch.ops.wkv.wkv_forward(td, tf, k, v, st, True)
            saved = torch.ops.wkv.wkv_backward(td, tf, k, v, st, gy, gs, ck)
            again = torch.ops.wkv.wkv_backward(td, tf, k, v, st, gy, gs, None)
            for a, b in zip(saved, again):
                assert torch.equal(a, b)
    finally:
        reset_backend()


def test_checkpoints_cross_kernels():
    """Checkpoints have one format: the SIMD kernel's feed the emulated CUDA backward and back."""
    B, T, C = 2, 90, 24
    td, tf, k, v = [x.float() for x in make_inputs(B, T, C, seed=8)]
    gy = torch.randn_like(k)
    _, _, ck_cpu = torch.ops.wkv.wkv_forward(td, tf, k, v, None, True)
    rwkv_wkv.cpu_isa("cuda_emulation")
    try:
        _, _, ck_emu = torch.ops.wkv.wkv_forward(td, tf, k, v, None, True)
        emu_from_cpu = torch.ops.wkv.wkv_backward(td, tf, k, v, None, gy, None, ck_cpu)
    finally:
        reset_backend()
    cpu_from_emu = torch.ops.wkv.wkv_backward(td, tf, k, v, None, gy, None, ck_emu)
    torch.testing.assert_close(ck_cpu, ck_emu, rtol=1e-5, atol=1e-5)
    for a, b in zip(emu_from_cpu, cpu_from_emu):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_bad_checkpoints_are_refused():
    td, tf, k, v = [x.float() for x in make_inputs(2, 40, 5, seed=9)]
    gy = torch.randn_like(k)
    bad = {
        "shape": torch.zeros(2, 1, 3, 5),
        "dtype": torch.zeros(2, 2, 3, 5, dtype=torch.float64),
        "dims": torch.zeros(2, 2, 15),
    }
    for why, ck in bad.items():
        with pytest.raises(ValueError, match="checkpoints"):
            torch.ops.wkv.wkv_backward(td, tf, k, v, None, gy, None, ck)


def test_autograd_saves_checkpoints_only_when_needed():
    """wkv under no_grad (or with nothing requiring grad) asks for no checkpoints."""
    from rwkv_wkv.ops import _needs_grad

    x = torch.zeros(3)
    assert not _needs_grad(x, None)
    assert _needs_grad(x.requires_grad_(), None)
    with torch.no_grad():
        assert not _needs_grad(x)


# ---- the plan -------------------------------------------------------------------------------

def test_plan_matches_the_measured_prototype():
    """With an H200's 132 SMs the plan picks the chunk lengths measured best (docs/cuda.md)
    (within a factor 2 where noted) and the serial kernel once B * C fills the GPU."""
    plan = {s: rwkv_wkv.cuda_plan(*s, sms=132) for s in
            [(1, 1024, 512), (8, 1024, 512), (16, 1024, 768), (1, 16384, 512), (4, 4096, 1024),
             (32, 1024, 1024), (64, 512, 4096), (1, 4096, 768)]}
    assert plan[(1, 1024, 512)] == 32 and plan[(8, 1024, 512)] == 32
    assert plan[(16, 1024, 768)] == 64 and plan[(1, 16384, 512)] == 64
    assert plan[(4, 4096, 1024)] == 64 and plan[(32, 1024, 1024)] == 128
    assert plan[(64, 512, 4096)] >= 512  # serial: the lanes alone fill the GPU
    assert plan[(1, 4096, 768)] in (32, 64)  # measured best: 64
    for (B, T, C), length in plan.items():
        assert length % 32 == 0


def test_plan_settings():
    try:
        assert rwkv_wkv.cuda_chunk_length() == 0
        rwkv_wkv.cuda_chunk_length("serial")
        assert rwkv_wkv.cuda_plan(1, 1000, 8) >= 1000
        rwkv_wkv.cuda_chunk_length(40)
        assert rwkv_wkv.cuda_plan(1, 1000, 8) == 64  # rounded up to whole segments
        assert rwkv_wkv.cuda_plan(1, 10, 8) >= 10  # one chunk
        with pytest.raises(ValueError, match="chunk length"):
            rwkv_wkv.cuda_chunk_length(-2)
        with pytest.raises(ValueError, match="'auto' or 'serial'"):
            rwkv_wkv.cuda_chunk_length("fast")
    finally:
        rwkv_wkv.cuda_chunk_length("auto")
    # fewer SMs: fewer threads wanted, longer chunks
    assert rwkv_wkv.cuda_plan(8, 4096, 512, sms=8) > rwkv_wkv.cuda_plan(8, 4096, 512, sms=132)


def test_gpu_workload_script_runs_on_the_emulation():
    """scripts/gpu_workload.py (what compute-sanitizer runs on a GPU) is itself correct."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "gpu_workload.py"
    spec = importlib.util.spec_from_file_location("gpu_workload", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    try:
        mod.main(emulate=True)
    finally:
        reset_backend()
