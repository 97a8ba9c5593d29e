"""The Python side of the RWKV-7 WKV op: fake kernels, autograd, and the public functions.

torch.ops.wkv.wkv7_forward / wkv7_backward are defined in C++ (csrc/rwkv7/wkv7_ops.cpp). Here they
get fake (meta) kernels, so torch.compile / export can trace them, and an autograd formula, so
``wkv7`` is differentiable in r, w, k, v, a, b and the initial state. Derivatives beyond the
first order, forward mode and torch.func's transforms run through ``reference.wkv7_naive``
(src/rwkv_wkv/_transforms.py says when).

Conventions (RWKV-LM's): the decay is d = exp(-exp(w)) per key channel; the state is
(B, H, N, N) with S[i][j], i the value index, j the key index; see ``reference`` and
``to_fla`` / ``from_fla`` for flash-linear-attention's.
"""

from __future__ import annotations

import torch

from .. import _library
from .._transforms import autodiff_requested, autodiff_vjp, differentiable_backward, needs_grad
from .._transforms import check as _check
from .reference import math_dtype, wkv7_naive

_library.load()

_INPUT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_NAMES = ("r", "w", "k", "v", "a", "b")

# The forward can save the state before every CHECKPOINT_STEPS-th step for the backward
# (csrc/rwkv7/wkv7.h kCheckpointSteps): (B, H, ceil(T / 32), N, N) in the math dtype.
CHECKPOINT_STEPS = 32


def _num_checkpoints(T):
    return (T + CHECKPOINT_STEPS - 1) // CHECKPOINT_STEPS


def _check_inputs(op, xs):
    """Mirror of the C++ checks (they never run on fake tensors, nor on the naive path)."""
    r = xs[0]
    _check(op, r.dim() == 4, f"r must have 4 dimensions (B, T, H, N), got shape {tuple(r.shape)}")
    _check(op, r.dtype in _INPUT_DTYPES, f"r must have dtype float32, float64, bfloat16 or float16, got {r.dtype}")
    for name, x in zip(_NAMES[1:], xs[1:]):
        _check(op, x.dtype == r.dtype, f"{name} must have dtype {r.dtype} (the same as r), got {x.dtype}")
        _check(op, x.device == r.device,
               f"{name} is on {x.device} but r is on {r.device}; all tensors must be on one device", RuntimeError)
        _check(op, x.shape == r.shape, f"{name} must have shape (B, T, H, N) as r = {tuple(r.shape)}, "
               f"got {tuple(x.shape)}")
    return r.shape


def _check_state(op, s, name, r):
    if s is None:
        return
    B, _, H, N = r.shape
    math = math_dtype(r)
    _check(op, s.dtype == math, f"{name} must have dtype {math} (the math dtype), got {s.dtype}")
    _check(op, s.device == r.device, f"{name} is on {s.device} but r is on {r.device}", RuntimeError)
    _check(op, tuple(s.shape) == (B, H, N, N), f"{name} must have shape (B, H, N, N) = {(B, H, N, N)}, "
           f"got {tuple(s.shape)}")


@torch.library.register_fake("wkv::wkv7_forward")
def _forward_fake(r, w, k, v, a, b, state=None, save_checkpoints=False):
    B, T, H, N = _check_inputs("wkv.wkv7_forward", (r, w, k, v, a, b))
    _check_state("wkv.wkv7_forward", state, "state", r)
    math = math_dtype(r)
    n = _num_checkpoints(T) if save_checkpoints else 0
    return r.new_empty((B, T, H, N)), r.new_empty((B, H, N, N), dtype=math), r.new_empty((B, H, n, N, N), dtype=math)


@torch.library.register_fake("wkv::wkv7_backward")
def _backward_fake(r, w, k, v, a, b, state, gy, gstate_out, checkpoints=None):
    B, T, H, N = _check_inputs("wkv.wkv7_backward", (r, w, k, v, a, b))
    _check_state("wkv.wkv7_backward", state, "state", r)
    _check_state("wkv.wkv7_backward", gstate_out, "gstate_out", r)
    return (*(r.new_empty((B, T, H, N)) for _ in range(6)), r.new_empty((B, H, N, N), dtype=math_dtype(r)))


def _setup_context(ctx, inputs, output):
    r, w, k, v, a, b, state, _ = inputs
    checkpoints = output[2]
    ctx.save_for_backward(r, w, k, v, a, b, state, checkpoints)
    ctx.has_state = state is not None
    ctx.mark_non_differentiable(checkpoints)


def _backward(ctx, gy, gstate_out, _gcheckpoints):
    r, w, k, v, a, b, state, checkpoints = ctx.saved_tensors
    primals = (r, w, k, v, a, b, state)
    if differentiable_backward(*primals, gy, gstate_out):
        # create_graph=True: a gradient that can be differentiated again, through wkv7_naive
        return (*autodiff_vjp(wkv7_naive, primals, ctx.needs_input_grad, (gy, gstate_out)), None)
    if gy is None:
        gy = torch.zeros_like(r)
    *grads, gstate = torch.ops.wkv.wkv7_backward(r, w, k, v, a, b, state, gy, gstate_out, checkpoints)
    return (*grads, gstate if ctx.has_state else None, None)


torch.library.register_autograd("wkv::wkv7_forward", _backward, setup_context=_setup_context)


def _as_heads(op, xs, state, head_size):
    """(B, T, C) inputs as (B, T, H, N): N from head_size, else from the state."""
    r = xs[0]
    if r.dim() != 3:
        return xs
    N = head_size if head_size is not None else (state.shape[-1] if state is not None else None)
    _check(op, N is not None, "(B, T, C) inputs need head_size (or a state, whose last size is N)")
    _check(op, N > 0 and r.shape[2] % N == 0, f"C = {r.shape[2]} must be a multiple of the head size {N}")
    for name, x in zip(_NAMES, xs):
        _check(op, x.dim() == 3 and x.shape == r.shape, f"{name} must have r's shape {tuple(r.shape)}, "
               f"got {tuple(x.shape)}")
    return tuple(x.reshape(*x.shape[:2], x.shape[2] // N, N) for x in xs)


def wkv7(r, w, k, v, a, b, state=None, *, head_size=None):
    """The RWKV-7 WKV operator: ``y, new_state = wkv7(r, w, k, v, a, b, state)``.

    r, w, k, v, a, b: (B, T, H, N), or (B, T, C) with ``head_size`` N (C = H N), one dtype of
    float32 / float64 / bfloat16 / float16; y has their shape and dtype. The decay is
    d = exp(-exp(w)) per key channel (RWKV-LM's w, e.g. -softplus(-(w0 + lora)) - 0.5).
    state: (B, H, N, N) in the math dtype (float32; float64 for float64 inputs), S[i][j] with i
    the value index, or None for zeros; the new state is returned (T = 0: unchanged).

        S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,    y_t = S_t r_t

    Differentiable in every input and the state, to any order and in forward mode; a sequence
    processed in segments with the state carried gives the values and gradients of one pass.
    """
    shape = r.shape
    xs = _as_heads("wkv7", (r, w, k, v, a, b), state, head_size)
    if autodiff_requested(*xs, state):
        _check_inputs("wkv7", xs)
        _check_state("wkv7", state, "state", xs[0])
        y, new_state = wkv7_naive(*xs, state)
    else:
        save = needs_grad(*xs, state)
        y, new_state, _ = torch.ops.wkv.wkv7_forward(*xs, state, save)
    return y.reshape(shape), new_state


class WKV7Function:
    """``WKV7Function.apply(r, w, k, v, a, b, state=None) -> (y, state)``: ``wkv7`` in the shape
    of an autograd Function (a class with ``apply``, not a subclass, so torch.func and
    torch.compile see straight through it; it has every derivative ``wkv7`` has)."""

    @staticmethod
    def apply(r, w, k, v, a, b, state=None):
        return wkv7(r, w, k, v, a, b, state)


def RUN_CUDA_RWKV7g(q, w, k, v, a, b, head_size=64):  # noqa: N802 (RWKV-LM's name)
    """Drop-in for RWKV-LM's ``RUN_CUDA_RWKV7g(q, w, k, v, a, b)`` (RWKV-v7/train_temp): (B, T, C)
    inputs, ``w`` already soft-clamped (d = exp(-exp(w))), the state starting at zero and not
    returned; returns y (B, T, C). Unlike RWKV-LM's kernel: any T (no multiple of 16), any dtype,
    any head size, CPU and CUDA. ``head_size`` is RWKV-LM's HEAD_SIZE (64 in its models)."""
    return wkv7(q, w, k, v, a, b, head_size=head_size)[0]


run_cuda_rwkv7g = RUN_CUDA_RWKV7g
