"""Shared by the RWKV-7 op tests: inputs as the model forms them, the backends, tolerances."""

from __future__ import annotations

import pytest
import torch
from conftest import CPU_ISAS, HAS_CUDA

import rwkv_wkv

# Every kernel the RWKV-7 op has here: the CPU kernels per instruction set, the CUDA kernels'
# bodies emulated on the CPU, and the GPU when there is one.
BACKENDS7 = [f"cpu-{isa}" for isa in CPU_ISAS] + ["cpu-emu"] + (["cuda"] if HAS_CUDA else [])
# Relative to the largest |reference| entry, against float64: float32 math for 16-bit inputs
# with their own rounding of every input and output.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}


def select7(name):
    if name == "cpu-emu":
        rwkv_wkv.cpu_isa("cuda_emulation")
        return "cpu"
    if name.startswith("cpu-"):
        rwkv_wkv.cpu_isa(name[4:])
        return "cpu"
    return "cuda"


@pytest.fixture(params=BACKENDS7)
def backend7(request):
    device = select7(request.param)
    yield device
    rwkv_wkv.cpu_isa("auto")


def inputs(B=2, T=7, H=2, N=4, dtype=torch.float64, seed=0, decay=None, device="cpu"):
    """r, w, k, v, a, b (B, T, H, N) as RWKV-7 forms them: w = -softplus(-x) - 0.5,
    a = -kk, b = kk * a_coef with kk of unit length per head."""
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g, dtype=torch.float64) for _ in range(3))
    w = -torch.nn.functional.softplus(-torch.randn(B, T, H, N, generator=g, dtype=torch.float64)) - 0.5
    if decay is not None:
        w = torch.full_like(w, decay)
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g, dtype=torch.float64), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, N, generator=g, dtype=torch.float64)
    return tuple(x.to(device=device, dtype=dtype) for x in (r, w, k, v, a, b))


def state(B=2, H=2, N=4, dtype=torch.float64, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(B, H, N, N, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)


def assert_rel(got, want, tol, what=""):
    got, want = got.double().cpu(), want.double().cpu()
    assert got.shape == want.shape, (what, got.shape, want.shape)
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= tol * max(scale, 1e-30) + 1e-30, f"{what}: max error {err:.3g} vs scale {scale:.3g} (tol {tol})"
