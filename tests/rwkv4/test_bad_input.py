"""Malformed calls raise a clear Python exception naming the argument — never a crash, an
out-of-bounds access or a silent wrong answer."""

from __future__ import annotations

import pytest
import torch

import rwkv_wkv

B, T, C = 2, 4, 3
f32, f64 = torch.float32, torch.float64


def good():
    g = torch.Generator().manual_seed(0)
    return dict(
        td=torch.randn(C, generator=g),
        tf=torch.randn(C, generator=g),
        k=torch.randn(B, T, C, generator=g),
        v=torch.randn(B, T, C, generator=g),
        state=None,
    )


def functional(**over):
    a = good()
    a.update(over)
    return lambda: torch.ops.wkv.wkv_forward(a["td"], a["tf"], a["k"], a["v"], a["state"])


def functional_bwd(**over):
    a = good()
    gy = over.pop("gy", torch.ones(B, T, C))
    gs = over.pop("gs", None)
    a.update(over)
    return lambda: torch.ops.wkv.wkv_backward(a["td"], a["tf"], a["k"], a["v"], a["state"], gy, gs)


def legacy_fwd(b=B, t=T, c=C, **over):
    a = good()
    a["w"] = -torch.exp(a["td"])
    a["y"] = torch.empty(B, T, C)
    a.update(over)
    return lambda: torch.ops.wkv.forward(b, t, c, a["w"], a["tf"], a["k"], a["v"], a["y"])


def legacy_bwd(**over):
    a = good()
    a.update(w=-torch.exp(a["td"]), gy=torch.ones(B, T, C), gw=torch.zeros(B, C), gu=torch.zeros(B, C),
             gk=torch.empty(B, T, C), gv=torch.empty(B, T, C))
    a.update(over)
    return lambda: torch.ops.wkv.backward(
        B, T, C, a["w"], a["tf"], a["k"], a["v"], a["gy"], a["gw"], a["gu"], a["gk"], a["gv"]
    )


def noncontig(shape):
    return torch.randn(*shape[:-1], shape[-1] * 2)[..., ::2]


CASES = {
    # functional op: dtypes
    "k int64": (functional(k=torch.ones(B, T, C, dtype=torch.int64)), "k must have dtype"),
    "v dtype differs from k": (functional(v=torch.randn(B, T, C, dtype=f64)), "v must have dtype"),
    "time_decay float16": (functional(td=torch.randn(C).half()), "time_decay must have dtype"),
    "time_first dtype differs": (functional(tf=torch.randn(C, dtype=f64)), "time_first must have dtype"),
    "state float64 for float32 k": (functional(state=torch.zeros(B, 3, C, dtype=f64)), "state must have dtype"),
    # functional op: ranks and shapes
    "k 2-D": (functional(k=torch.randn(T, C)), "k must have 3 dimensions"),
    "k 4-D": (functional(k=torch.randn(1, B, T, C)), "k must have 3 dimensions"),
    "v shape differs": (functional(v=torch.randn(B, T + 1, C)), "v must have shape"),
    "time_decay wrong length": (functional(td=torch.randn(C + 1)), "time_decay must have shape"),
    "time_first 2-D": (functional(tf=torch.randn(1, C)), "time_first must have shape"),
    "state wrong shape": (functional(state=torch.zeros(B, 2, C)), "state must have shape"),
    "state wrong batch": (functional(state=torch.zeros(B + 1, 3, C)), "state must have shape"),
    # (empty inputs are valid: tests/rwkv4/test_transforms.py)
    "empty T, v not empty": (functional(k=torch.randn(B, 0, C)), "v must have shape"),
    # functional backward
    "gy wrong shape": (functional_bwd(gy=torch.ones(B, T, C + 1)), "gy must have shape"),
    "gy wrong dtype": (functional_bwd(gy=torch.ones(B, T, C, dtype=f64)), "gy must have dtype"),
    "gstate_out wrong shape": (functional_bwd(gs=torch.ones(B, 3, C + 2)), "gstate_out must have shape"),
    # legacy forward: sizes disagreeing with tensors, invalid sizes, layout
    "B too large": (legacy_fwd(b=B + 1), "k must have shape"),
    "T too large": (legacy_fwd(t=T * 100), "k must have shape"),
    "C too small": (legacy_fwd(c=C - 1), "k must have shape"),
    "B zero, tensors not empty": (legacy_fwd(b=0), "k must have shape"),
    "B negative": (legacy_fwd(b=-1), "B must be >= 0"),
    "T negative": (legacy_fwd(t=-1), "T must be >= 0"),
    "y wrong shape": (legacy_fwd(y=torch.empty(B, T, C + 1)), "y must have shape"),
    "y wrong dtype": (legacy_fwd(y=torch.empty(B, T, C, dtype=f64)), "y must have dtype"),
    "y non-contiguous": (legacy_fwd(y=noncontig((B, T, C))), "y must be contiguous"),
    "k non-contiguous": (legacy_fwd(k=noncontig((B, T, C))), "k must be contiguous"),
    "w non-contiguous": (legacy_fwd(w=noncontig((C,))), "w must be contiguous"),
    "w int32": (legacy_fwd(w=torch.ones(C, dtype=torch.int32)), "w must have dtype"),
    # legacy backward
    "gw wrong shape": (legacy_bwd(gw=torch.zeros(C)), "gw must have shape"),
    "gu float64": (legacy_bwd(gu=torch.zeros(B, C, dtype=f64)), "gu must have dtype"),
    "gk non-contiguous": (legacy_bwd(gk=noncontig((B, T, C))), "gk must be contiguous"),
    "gv wrong shape": (legacy_bwd(gv=torch.empty(B, T - 1, C)), "gv must have shape"),
    # devices (meta stands in for a second device where no GPU is present)
    "k on meta, rest on cpu": (functional(k=torch.empty(B, T, C, device="meta")), "on one device"),
    "state on meta": (functional(state=torch.zeros(B, 3, C, device="meta")), "state is on meta"),
}
# A wrong device is a RuntimeError (as in torch); a wrong dtype, shape, size or layout a
# ValueError, raised by the C++ op itself (std::invalid_argument crosses the stable ABI as one).
DEVICE_CASES = {"k on meta, rest on cpu", "state on meta"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_raises(name):
    call, message = CASES[name]
    expected = RuntimeError if name in DEVICE_CASES else ValueError
    with pytest.raises(Exception, match=message) as info:
        call()
    assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"


def test_table_is_large_enough():
    assert len(CASES) >= 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_cpu_cuda_raises():
    a = good()
    with pytest.raises(RuntimeError, match="on one device"):
        torch.ops.wkv.wkv_forward(a["td"].cuda(), a["tf"].cuda(), a["k"], a["v"].cuda(), None)
    with pytest.raises(RuntimeError, match="on one device"):
        torch.ops.wkv.wkv_forward(a["td"], a["tf"], a["k"].cuda(), a["v"].cuda(), None)


def test_wkv_function_checks_sizes():
    a = good()
    with pytest.raises(ValueError, match="k must have shape"):
        rwkv_wkv.WKVFunction.apply(B, T + 1, C, a["td"], a["tf"], a["k"], a["v"])


def test_nothing_written_on_error():
    """A rejected call leaves its output buffers untouched."""
    a = good()
    y = torch.full((B, T, C), 7.0)
    with pytest.raises(ValueError):
        torch.ops.wkv.forward(B, T, C, -torch.exp(a["td"]), a["tf"], a["k"], a["v"][:, :, :2].contiguous(), y)
    assert (y == 7.0).all()
