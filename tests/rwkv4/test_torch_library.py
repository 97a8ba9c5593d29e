"""torch.library integration: opcheck on every op, torch.compile(fullgraph=True) fwd + bwd."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs

import rwkv_wkv


def _inputs(device, dtype=torch.float32, B=2, T=9, C=5, requires_grad=False):
    td, tf, k, v = make_inputs(B, T, C, seed=30)
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    out = [td.to(device, pd), tf.to(device, pd), k.to(device, dtype), v.to(device, dtype)]
    return [x.requires_grad_(requires_grad) for x in out]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("with_state", [False, True])
def test_opcheck_wkv_forward(device, dtype, with_state):
    td, tf, k, v = _inputs(device, dtype, requires_grad=True)
    state = None
    if with_state:
        math = torch.float64 if dtype == torch.float64 else torch.float32
        state = rwkv_wkv.wkv_with_state(*[x.detach() for x in (td, tf, k, v)])[1].to(math).requires_grad_()
    torch.library.opcheck(torch.ops.wkv.wkv_forward.default, (td, tf, k, v, state))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_wkv_backward(device, dtype):
    td, tf, k, v = _inputs(device, dtype)
    y, s, _ = torch.ops.wkv.wkv_forward(td, tf, k, v, None)
    gy = torch.randn_like(y)
    gs = torch.randn_like(s)
    torch.library.opcheck(torch.ops.wkv.wkv_backward.default, (td, tf, k, v, s, gy, gs))
    torch.library.opcheck(torch.ops.wkv.wkv_backward.default, (td, tf, k, v, None, gy, None))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_opcheck_with_checkpoints(device, dtype):
    """The forward that saves checkpoints (autograd then passes them to the backward) and the
    backward that takes them."""
    td, tf, k, v = _inputs(device, dtype, T=70, requires_grad=True)
    torch.library.opcheck(torch.ops.wkv.wkv_forward.default, (td, tf, k, v, None, True))
    y, s, ck = torch.ops.wkv.wkv_forward(*[x.detach() for x in (td, tf, k, v)], None, True)
    assert ck.shape == (2, 3, 3, 5)
    gy, gs = torch.randn_like(y), torch.randn_like(s)
    args = [x.detach() for x in (td, tf, k, v)]
    torch.library.opcheck(torch.ops.wkv.wkv_backward.default, (*args, s, gy, gs, ck))


def test_opcheck_legacy_ops(device):
    td, tf, k, v = _inputs(device)
    B, T, C = k.shape
    w = -torch.exp(td)
    y = torch.empty_like(k)
    torch.library.opcheck(torch.ops.wkv.forward.default, (B, T, C, w, tf, k, v, y))
    gy = torch.randn_like(k)
    gw = torch.zeros(B, C, device=device)
    gu = torch.zeros(B, C, device=device)
    gk, gv = torch.empty_like(k), torch.empty_like(k)
    torch.library.opcheck(torch.ops.wkv.backward.default, (B, T, C, w, tf, k, v, gy, gw, gu, gk, gv))


def _loss(td, tf, k, v):
    y = rwkv_wkv.wkv(td, tf, k, v)
    y2, s = rwkv_wkv.wkv_with_state(td, tf, k * 0.5, v, None)
    return (y * torch.sin(k)).sum() + y2.square().mean() + s[:, 0].sum()


def test_compile_fullgraph_forward_backward(device):
    torch._dynamo.reset()
    compiled = torch.compile(_loss, fullgraph=True)
    eager_in = _inputs(device, requires_grad=True)
    comp_in = [x.detach().clone().requires_grad_() for x in eager_in]
    le = _loss(*eager_in)
    le.backward()
    lc = compiled(*comp_in)
    lc.backward()
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-5)
    for a, b in zip(comp_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_fake_tensor_shapes():
    """Tracing with fake tensors needs no data and gives the right shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        td, tf = torch.empty(7), torch.empty(7)
        k = torch.empty(3, 11, 7, dtype=torch.bfloat16)
        y, s, ck = torch.ops.wkv.wkv_forward(td, tf, k, k, None)
        assert y.shape == (3, 11, 7) and y.dtype == torch.bfloat16
        assert s.shape == (3, 3, 7) and s.dtype == torch.float32
        assert ck.shape == (3, 0, 3, 7) and ck.dtype == torch.float32
        k = torch.empty(2, 65, 7)
        _, _, ck = torch.ops.wkv.wkv_forward(td, tf, k, k, None, True)
        assert ck.shape == (2, 3, 3, 7)
        with pytest.raises(ValueError, match="v must have shape"):
            torch.ops.wkv.wkv_forward(td, tf, k, k[:, :5], None)
