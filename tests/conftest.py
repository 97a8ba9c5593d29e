"""Shared fixtures: the backends every op test runs on, and cached float64 references.

Backends: each CPU instruction set this processor runs (the SIMD kernels and the portable
scalar one), plus CUDA when a GPU and a CUDA build are present, so the same tests run on a GPU
machine (scripts/gpu_check.sh) with no change.
"""

from __future__ import annotations

import functools

import pytest
import torch
from rwkv_wkv.reference import wkv_exact

import rwkv_wkv


def _cpu_isas():
    isas = []
    for isa in ("avx512", "avx2", "scalar"):
        try:
            rwkv_wkv.cpu_isa(isa)
            isas.append(isa)
        except RuntimeError:
            pass
    rwkv_wkv.cpu_isa("auto")
    return isas


CPU_ISAS = _cpu_isas()
HAS_CUDA = torch.cuda.is_available() and rwkv_wkv.build_info()["cuda"]
# The CUDA kernels' bodies emulated on the CPU (csrc/rwkv4/cpu/wkv_emulate.cpp), with one chunk (the
# serial kernel), 32-step chunks (one segment each) and 96-step chunks (three segments each);
# on a GPU the same three settings besides the automatic plan.
CHUNKINGS = {"serial": "serial", "chunk32": 32, "chunk96": 96}
EMULATED = {f"cpu-emu-{name}": chunk for name, chunk in CHUNKINGS.items()}
CUDA_FORCED = {f"cuda-{name}": chunk for name, chunk in CHUNKINGS.items()} if HAS_CUDA else {}
BACKENDS = ([f"cpu-{isa}" for isa in CPU_ISAS] + list(EMULATED)
            + (["cuda"] + list(CUDA_FORCED) if HAS_CUDA else []))
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def select_backend(name):
    """Selects a backend (see BACKENDS) and returns its device string; undo with reset_backend()."""
    if name in EMULATED:
        rwkv_wkv.cpu_isa("cuda_emulation")
        rwkv_wkv.cuda_chunk_length(EMULATED[name])
        return "cpu"
    if name.startswith("cpu-"):
        rwkv_wkv.cpu_isa(name[4:])
        return "cpu"
    rwkv_wkv.cuda_chunk_length(CUDA_FORCED.get(name, "auto"))
    return "cuda"


def reset_backend():
    rwkv_wkv.cpu_isa("auto")
    rwkv_wkv.cuda_chunk_length("auto")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Yields the device string; selects the CPU kernel (or the CUDA emulation) for CPU backends."""
    device = select_backend(request.param)
    yield device
    reset_backend()


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def make_inputs(B, T, C, seed=0, kind="normal"):
    """float64 CPU inputs; kind="extreme": k in [-1000, 1000], time_decay/time_first in [-10, 10]."""
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    if kind == "extreme":
        td = torch.rand(C, generator=g, dtype=f64) * 20 - 10
        tf = torch.rand(C, generator=g, dtype=f64) * 20 - 10
        k = torch.rand(B, T, C, generator=g, dtype=f64) * 2000 - 1000
    else:
        # RWKV-4-like ranges: decays from slow to fast, bonus around 0.5, k of unit scale.
        td = torch.linspace(-5, 1.5, C, dtype=f64) + 0.3 * torch.randn(C, generator=g, dtype=f64)
        tf = 0.5 + 0.5 * torch.randn(C, generator=g, dtype=f64)
        k = torch.randn(B, T, C, generator=g, dtype=f64) * 2
    v = torch.randn(B, T, C, generator=g, dtype=f64)
    return td, tf, k, v


@functools.lru_cache(maxsize=None)
def exact_cached(B, T, C, seed, kind, dtype_name):
    """wkv_exact of make_inputs(...) rounded to `dtype` first (the kernel sees rounded inputs)."""
    dtype = getattr(torch, dtype_name)
    td, tf, k, v = make_inputs(B, T, C, seed, kind)
    k, v = k.to(dtype), v.to(dtype)
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32
    return wkv_exact(td.to(pdtype), tf.to(pdtype), k, v)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` (AOTInductor compiles, the C++ runner's build, entry-by-entry gradchecks
    that have a fast sibling in the default run) run only when asked for
    with ``-m slow`` (.ci/run does); the default run skips them."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with `pytest -m slow`")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
