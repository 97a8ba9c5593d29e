"""What every generation's op layer needs to give exact derivatives under every PyTorch transform.

The kernels give the forward and an exact first-order backward. Every other derivative — a
backward under ``create_graph=True`` (double backward, gradient penalties, Hessian-vector
products), forward-mode AD (dual tensors, torch.func.jvp / jacfwd), torch.func's grad / vjp /
jacrev / hessian and their compositions — runs through the generation's naive reference (the same
recurrence in plain torch ops), chosen only when such a derivative is requested: training and
inference never pay for its Python loop over T.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as _fwAD
from torch._C._functorch import TransformType as _TransformType


def check(op, cond, msg, exc=ValueError):
    if not cond:
        raise exc(f"{op}: {msg}")


def has_tangent(tensors):
    """Whether forward-mode AD (torch.autograd.forward_ad) carries a tangent on any of these."""
    if _fwAD._current_level < 0 or not torch._C._is_fwd_grad_enabled():
        return False
    return any(t is not None and _fwAD.unpack_dual(t).tangent is not None for t in tensors)


def differentiable_backward(*tensors):
    """Whether a backward must build a graph of its own: grad mode is on inside a backward only
    under ``create_graph=True``; then the kernel's gradient (a constant to autograd) would make
    every second-order derivative silently zero."""
    return (
        torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and any(t is not None and t.requires_grad for t in tensors)
    )


def autodiff_vjp(forward, primals, needs_input_grad, grad_outputs):
    """The gradients of ``primals`` through ``forward(*primals)`` (a tuple of outputs) against
    ``grad_outputs`` (None: that output gets no gradient; the first output's None is zeros), with
    a graph, so they can be differentiated again. Unused or unwanted inputs get None / zeros."""
    wanted = [i for i, p in enumerate(primals) if p is not None and needs_input_grad[i] and p.requires_grad]
    grads = [None] * len(primals)
    if not wanted:
        return grads
    with torch.enable_grad():
        outs_all = forward(*primals)
        outs, gouts = [], []
        for i, (o, g) in enumerate(zip(outs_all, grad_outputs)):
            if g is None and i == 0:
                g = torch.zeros_like(o)
            if g is not None:
                outs.append(o)
                gouts.append(g)
        got = torch.autograd.grad(outs, [primals[i] for i in wanted], gouts, create_graph=True, allow_unused=True)
    for i, g in zip(wanted, got):
        grads[i] = torch.zeros_like(primals[i]) if g is None else g
    return grads


def transform_active(kinds, tensors):
    """Whether one of functorch's transforms of these ``kinds`` is on its stack (any level), or a
    torch.autograd.forward_ad dual tensor is among ``tensors``. False while compiling/exporting."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.peek_interpreter_stack() is not None:
        from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

        if any(i.key() in kinds for i in retrieve_all_functorch_interpreters()):
            return True
    return has_tangent(tensors)


def autodiff_requested(*tensors):
    """Whether a call must run as the naive reference: functorch's grad or jvp is active
    (torch.func.grad, vjp, jacrev, jacfwd, hessian, and compositions with vmap), or forward-mode
    AD on a dual input. Plain autograd (first order; double backward: see
    ``differentiable_backward``), vmap alone, torch.compile and torch.export use the kernels."""
    return transform_active((_TransformType.Grad, _TransformType.Jvp), tensors)


def forward_mode_requested(*tensors):
    """Whether forward-mode AD is at work on these tensors: functorch's jvp (torch.func.jvp,
    jacfwd, hessian) or a torch.autograd.forward_ad dual tensor among them."""
    return transform_active((_TransformType.Jvp,), tensors)


def needs_grad(*tensors):
    """Whether autograd will want a backward of this call: then the forward saves checkpoints.

    Not under torch.export: the checkpoints' shape (ceil(T / 32) along time) would make export
    specialise T; the backward recomputes them instead (the same gradients)."""
    return (
        torch.is_grad_enabled()
        and any(t is not None and t.requires_grad for t in tensors)
        and not torch.compiler.is_exporting()
    )
