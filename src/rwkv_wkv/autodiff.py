"""WKV as plain torch ops, for the derivatives the kernels do not compute themselves.

The kernels give the forward and an exact first-order backward. Every other derivative a user
may ask for — a second-order gradient (``create_graph=True``, ``gradgradcheck``, gradient
penalties, Hessian-vector products), forward-mode AD (``torch.autograd.forward_ad`` dual
tensors, ``torch.func.jvp`` / ``jacfwd``) and functorch's ``grad`` / ``vjp`` / ``jacrev`` /
``hessian`` and their compositions — comes from ``wkv_autodiff``: the kernels' own recurrence
(the same shared exponent, so k up to +-1000 stays finite) written with differentiable torch
ops, so autograd and functorch differentiate it to any order.

It is used only when such a derivative is requested (``ops.py`` decides), so first-order
training and inference never pay for it. It is a Python loop over T (~15 small ops a step):
exact, but a few hundred times slower than the kernel.
"""

from __future__ import annotations

import torch

from .reference import EMPTY_EXPONENT, math_dtype


def wkv_autodiff(time_decay, time_first, k, v, state=None):
    """(y, new_state) exactly as ``torch.ops.wkv.wkv_forward`` computes them, differentiable.

    Same arguments, dtypes and results as ``rwkv_wkv.wkv_with_state``: y has k's dtype, the
    state (B, 3, C) = (aa, bb, pp) the math dtype (float32; float64 for float64 k). T = 0
    returns the state unchanged (the empty state when ``state`` is None).
    """
    dtype = math_dtype(k)
    w = -torch.exp(time_decay.to(dtype))
    u = time_first.to(dtype)
    kf, vf = k.to(dtype), v.to(dtype)
    B, T, C = k.shape
    if state is None:
        aa = kf.new_zeros((B, C))
        bb = kf.new_zeros((B, C))
        pp = kf.new_full((B, C), EMPTY_EXPONENT, dtype=torch.float32).to(dtype)  # the kernels' -1e38f
    else:
        aa, bb, pp = state.to(dtype).unbind(1)
    ys = []
    for kt, vt in zip(kf.unbind(1), vf.unbind(1)):
        bonus = u + kt
        q = torch.maximum(pp, bonus)
        e1, e2 = torch.exp(pp - q), torch.exp(bonus - q)
        ys.append((e1 * aa + e2 * vt) / (e1 * bb + e2))
        decayed = pp + w
        q = torch.maximum(decayed, kt)
        e1, e2 = torch.exp(decayed - q), torch.exp(kt - q)
        aa, bb, pp = e1 * aa + e2 * vt, e1 * bb + e2, q
    y = torch.stack(ys, dim=1).to(k.dtype) if ys else k[:, :0]
    new_state = torch.stack([aa, bb, pp], dim=1)
    return y, new_state
