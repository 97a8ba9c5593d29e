"""The Python side of the ops: fake kernels, autograd, and the public functions.

torch.ops.wkv.wkv_forward / wkv_backward are defined in C++ (csrc/rwkv4/wkv_ops.cpp). Here they get
fake (meta) kernels, so torch.compile / export can trace them, and an autograd formula, so
``wkv`` and ``wkv_with_state`` are differentiable in every input including the state.
"""

from __future__ import annotations

import torch

from .. import _library
from .._transforms import autodiff_requested as _autodiff_requested
from .._transforms import (
    autodiff_vjp,
    differentiable_backward,
    forward_mode_requested,  # noqa: F401 (the model's L2Wrap asks)
    has_tangent,
)
from .._transforms import check as _check
from .._transforms import needs_grad as _needs_grad
from .reference import wkv_naive
from .state import empty_state  # noqa: F401 (empty_state: public here too)
from .state import math_dtype as _math_dtype

_library.load()

_INPUT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check_fake_inputs(op, w, u, k, v, w_name="time_decay", u_name="time_first", sizes=None):
    """Mirror of the C++ checks for fake tensors (the C++ ones never run while tracing)."""
    _check(op, k.dim() == 3, f"k must have 3 dimensions (B, T, C), got shape {tuple(k.shape)}")
    B, T, C = k.shape if sizes is None else sizes
    _check(op, k.dtype in _INPUT_DTYPES, f"k must have dtype float32, float64, bfloat16 or float16, got {k.dtype}")
    _check(op, v.dtype == k.dtype, f"v must have dtype {k.dtype} (the same as k), got {v.dtype}")
    _check(op, w.dtype in (torch.float32, torch.float64), f"{w_name} must have dtype float32 or float64, got {w.dtype}")
    _check(op, u.dtype == w.dtype, f"{u_name} must have dtype {w.dtype} ({w_name}), got {u.dtype}")
    for t, name in ((v, "v"), (w, w_name), (u, u_name)):
        _check(
            op,
            t.device == k.device,
            f"{name} is on {t.device} but k is on {k.device}; all tensors must be on one device",
            RuntimeError,
        )
    for t, name, shape in ((k, "k", (B, T, C)), (v, "v", (B, T, C)), (w, w_name, (C,)), (u, u_name, (C,))):
        _check(op, tuple(t.shape) == tuple(shape), f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    return B, T, C


def _check_fake_state(op, s, name, k, B, C):
    if s is None:
        return
    _check(op, s.dtype == _math_dtype(k), f"{name} must have dtype {_math_dtype(k)}, got {s.dtype}")
    _check(op, s.device == k.device, f"{name} is on {s.device} but k is on {k.device}", RuntimeError)
    _check(op, tuple(s.shape) == (B, 3, C), f"{name} must have shape (B, 3, C) = {(B, 3, C)}, got {tuple(s.shape)}")


# The forward can save the state before every CHECKPOINT_STEPS-th step for the backward
# (csrc/rwkv4/wkv.h kCheckpointSteps): (B, ceil(T / 32), 3, C) in the math dtype, ~3/32 of k's elements.
CHECKPOINT_STEPS = 32


def _num_checkpoints(T):
    return (T + CHECKPOINT_STEPS - 1) // CHECKPOINT_STEPS


@torch.library.register_fake("wkv::wkv_forward")
def _wkv_forward_fake(time_decay, time_first, k, v, state=None, save_checkpoints=False):
    B, T, C = _check_fake_inputs("wkv.wkv_forward", time_decay, time_first, k, v)
    _check_fake_state("wkv.wkv_forward", state, "state", k, B, C)
    math = _math_dtype(k)
    n = _num_checkpoints(T) if save_checkpoints else 0
    return k.new_empty((B, T, C)), k.new_empty((B, 3, C), dtype=math), k.new_empty((B, n, 3, C), dtype=math)


@torch.library.register_fake("wkv::wkv_backward")
def _wkv_backward_fake(time_decay, time_first, k, v, state, gy, gstate_out, checkpoints=None):
    B, T, C = _check_fake_inputs("wkv.wkv_backward", time_decay, time_first, k, v)
    _check_fake_state("wkv.wkv_backward", state, "state", k, B, C)
    _check_fake_state("wkv.wkv_backward", gstate_out, "gstate_out", k, B, C)
    return (
        time_decay.new_empty((C,)),
        time_first.new_empty((C,)),
        k.new_empty((B, T, C)),
        k.new_empty((B, T, C)),
        k.new_empty((B, 3, C), dtype=_math_dtype(k)),
    )


@torch.library.register_fake("wkv::forward")
def _legacy_forward_fake(B, T, C, w, u, k, v, y):
    _check_fake_inputs("wkv.forward", w, u, k, v, "w", "u", sizes=(B, T, C))
    return None


@torch.library.register_fake("wkv::backward")
def _legacy_backward_fake(B, T, C, w, u, k, v, gy, gw, gu, gk, gv):
    _check_fake_inputs("wkv.backward", w, u, k, v, "w", "u", sizes=(B, T, C))
    return None


# RWKV-LM's ops write into preallocated outputs and have no derivative of their own (RWKV-LM
# wraps them in its WKV autograd.Function, whose forward and first-order backward run with grad
# mode off). Called where autograd would have to differentiate them — inside a backward under
# create_graph=True (double backward through RWKV-LM's WKV), or with a dual tensor — they raise
# instead of returning a gradient that is silently a constant.
_legacy_lib = torch.library.Library("wkv", "IMPL")


def _legacy_autograd_kernel(name):
    op = getattr(torch.ops.wkv, name).default

    def kernel(keyset, *args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        # inside a backward pass with grad mode on = create_graph=True (RWKV-LM's WKV.backward
        # runs with grad mode off otherwise): its gradient would be a constant to autograd
        in_graph_backward = torch.is_grad_enabled() and torch._C._current_autograd_node() is not None
        if not torch.compiler.is_compiling() and (  # (compile/export: RWKV-LM's Function's own)
            in_graph_backward or has_tangent(tensors)
        ):
            raise RuntimeError(
                f"wkv.{name} (RWKV-LM's contract) is not differentiable: it writes into "
                "preallocated outputs, and a derivative of it was requested (a second-order "
                "gradient through RWKV-LM's WKV, or forward-mode AD). Use rwkv_wkv.wkv, "
                "wkv_with_state or WKVFunction.apply, which have every derivative."
            )
        with torch._C._AutoDispatchBelowAutograd():
            return op.redispatch(keyset & torch._C._after_autograd_keyset, *args)

    return kernel


for _name in ("forward", "backward"):
    _legacy_lib.impl(_name, _legacy_autograd_kernel(_name), "Autograd", with_keyset=True)


def _setup_context(ctx, inputs, output):
    time_decay, time_first, k, v, state, _ = inputs
    checkpoints = output[2]
    ctx.save_for_backward(time_decay, time_first, k, v, state, checkpoints)
    ctx.has_state = state is not None
    ctx.mark_non_differentiable(checkpoints)


def _backward(ctx, gy, gstate_out, _gcheckpoints):
    time_decay, time_first, k, v, state, checkpoints = ctx.saved_tensors
    if differentiable_backward(time_decay, time_first, k, v, state, gy, gstate_out):
        # create_graph=True: the gradient must itself be differentiable (double backward), so it
        # runs through wkv_naive (src/rwkv_wkv/_transforms.py)
        grads = autodiff_vjp(
            lambda *p: wkv_naive(*p, return_state=True),
            (time_decay, time_first, k, v, state),
            ctx.needs_input_grad,
            (gy, gstate_out),
        )
        return (*grads, None)
    if gy is None:
        gy = torch.zeros_like(k)
    g_td, g_tf, gk, gv, gstate = torch.ops.wkv.wkv_backward(
        time_decay, time_first, k, v, state, gy, gstate_out, checkpoints
    )
    return g_td, g_tf, gk, gv, (gstate if ctx.has_state else None), None


torch.library.register_autograd("wkv::wkv_forward", _backward, setup_context=_setup_context)


def wkv(time_decay: torch.Tensor, time_first: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The WKV operator: y = wkv(time_decay, time_first, k, v), differentiable in all four.

    time_decay, time_first: (C,) float32/float64; the decay is w = -exp(time_decay).
    k, v: (B, T, C) float32/float64/bfloat16/float16 (same dtype); returns y of k's dtype.
    Derivatives of every order and in forward mode, and torch.func's transforms, are exact
    (see "derivatives beyond first order" above).
    """
    if _autodiff_requested(time_decay, time_first, k, v):
        _check_fake_inputs("wkv", time_decay, time_first, k, v)
        return wkv_naive(time_decay, time_first, k, v)
    save = _needs_grad(time_decay, time_first, k, v)
    return torch.ops.wkv.wkv_forward(time_decay, time_first, k, v, None, save)[0]


def wkv_with_state(time_decay, time_first, k, v, state=None):
    """WKV continuing from ``state``: returns (y, new_state).

    state is (B, 3, C) holding (aa, bb, pp) in the math dtype (float32; float64 for float64 k),
    or None for the empty state. Gradients flow into ``state`` too, so a sequence processed as
    consecutive segments gives the same values and gradients as one call over the whole.
    T = 0 returns the state unchanged.
    """
    if _autodiff_requested(time_decay, time_first, k, v, state):
        B, _, C = _check_fake_inputs("wkv_with_state", time_decay, time_first, k, v)
        _check_fake_state("wkv_with_state", state, "state", k, B, C)
        return wkv_naive(time_decay, time_first, k, v, state, return_state=True)
    save = _needs_grad(time_decay, time_first, k, v, state)
    y, new_state, _ = torch.ops.wkv.wkv_forward(time_decay, time_first, k, v, state, save)
    return y, new_state


class WKVFunction:
    """Drop-in for RWKV-LM's ``WKV``: ``WKVFunction.apply(B, T, C, time_decay, time_first, k, v)``.

    Takes the raw ``time_decay`` (w = -exp(time_decay) is formed inside), any T, any B*C. It is
    ``wkv`` behind RWKV-LM's call, so it has every derivative and transform ``wkv`` has (a
    class with ``apply``, not an ``autograd.Function`` subclass: torch.func and torch.compile
    then see straight through it).
    """

    @staticmethod
    def apply(B, T, C, time_decay, time_first, k, v):
        if tuple(k.shape) != (B, T, C):
            raise ValueError(f"WKVFunction: k must have shape (B, T, C) = {(B, T, C)}, got {tuple(k.shape)}")
        return wkv(time_decay, time_first, k, v)
