"""float64 gradcheck of every differentiable input, the state included."""

from __future__ import annotations

import pytest
import torch
from conftest import make_inputs
from rwkv_wkv.reference import wkv_exact

import rwkv_wkv


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 3), (1, 9, 17)], ids=lambda s: "x".join(map(str, s)))
def test_gradcheck_wkv(device, shape):
    td, tf, k, v = [x.to(device).requires_grad_() for x in make_inputs(*shape, seed=20)]
    assert torch.autograd.gradcheck(rwkv_wkv.wkv, (td, tf, k, v))


@pytest.mark.parametrize("kind", ["normal", "extreme"])
def test_gradcheck_with_state(device, kind):
    """Gradients w.r.t. time_decay, time_first, k, v and the input state, with the returned
    state also feeding the loss (so the gradient of pp_T is exercised)."""
    B, T, C = 2, 6, 5
    td, tf, k, v = make_inputs(B, T + 4, C, seed=21, kind=kind)
    if kind == "extreme":  # keep finite differences meaningful: moderate k range, eps-scale steps
        k = k / 100
    _, s0 = wkv_exact(td, tf, k[:, :4], v[:, :4], return_state=True)
    args = [x.to(device).detach().requires_grad_() for x in (td, tf, k[:, 4:], v[:, 4:], s0)]
    assert torch.autograd.gradcheck(rwkv_wkv.wkv_with_state, tuple(args))


def test_gradcheck_empty_state_input(device):
    """A state equal to the empty state is an input like any other."""
    td, tf, k, v = make_inputs(1, 4, 3, seed=22)
    s = rwkv_wkv.empty_state(1, 3, dtype=torch.float64)
    s[:, 2] = -30.0  # exp(-30) is tiny but differentiable
    args = [x.to(device).requires_grad_() for x in (td, tf, k, v, s)]
    assert torch.autograd.gradcheck(rwkv_wkv.wkv_with_state, tuple(args))


def test_gradcheck_wkv_function(device):
    td, tf, k, v = [x.to(device).requires_grad_() for x in make_inputs(2, 7, 3, seed=23)]
    f = lambda td, tf, k, v: rwkv_wkv.WKVFunction.apply(2, 7, 3, td, tf, k, v)  # noqa: E731
    assert torch.autograd.gradcheck(f, (td, tf, k, v))


def test_unused_outputs_have_no_gradient(device):
    """Backward with only y used, or only the state used."""
    td, tf, k, v = [x.to(device).requires_grad_() for x in make_inputs(1, 5, 4, seed=24)]
    y, s = rwkv_wkv.wkv_with_state(td, tf, k, v)
    s.sum().backward()
    assert torch.isfinite(k.grad).all()
    # gradient of the final state w.r.t. v_t, t < T: aa_T depends on every v
    assert (v.grad.abs() > 0).all()


def test_time_params_float32_with_float64_k():
    """Parameters in float32 with float64 sequences: math in float64, grads in float32."""
    td, tf, k, v = make_inputs(1, 5, 4, seed=25)
    td32, tf32 = td.float().requires_grad_(), tf.float().requires_grad_()
    y = rwkv_wkv.wkv(td32, tf32, k, v)
    assert y.dtype == torch.float64
    y.sum().backward()
    assert td32.grad.dtype == torch.float32 and tf32.grad.dtype == torch.float32
