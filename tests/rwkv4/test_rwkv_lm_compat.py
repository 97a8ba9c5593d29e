"""RWKV-LM's Python WKV autograd class, as written against its wkv_op.cpp, runs on our ops.

The class below is the equivalent few lines of RWKV-LM's RWKV-v4 `WKV` (float32 mode), written
for this test: it forms w = -exp(time_decay) itself, calls torch.ops.wkv.forward into a
preallocated y, and in backward zero-fills (B, C) gw/gu, calls torch.ops.wkv.backward, and sums
gw/gu over the batch.
"""

from __future__ import annotations

import torch
from conftest import make_inputs

import rwkv_wkv


class RWKVLM_WKV(torch.autograd.Function):
    @staticmethod
    def forward(ctx, B, T, C, w, u, k, v):
        ctx.B, ctx.T, ctx.C = B, T, C
        w = -torch.exp(w.float().contiguous())
        u = u.float().contiguous()
        k = k.float().contiguous()
        v = v.float().contiguous()
        ctx.save_for_backward(w, u, k, v)
        y = torch.empty((B, T, C), device=w.device, memory_format=torch.contiguous_format)
        torch.ops.wkv.forward(B, T, C, w, u, k, v, y)
        return y

    @staticmethod
    def backward(ctx, gy):
        B, T, C = ctx.B, ctx.T, ctx.C
        w, u, k, v = ctx.saved_tensors
        gw = torch.zeros((B, C), device=gy.device).contiguous()
        gu = torch.zeros((B, C), device=gy.device).contiguous()
        gk = torch.zeros((B, T, C), device=gy.device).contiguous()
        gv = torch.zeros((B, T, C), device=gy.device).contiguous()
        torch.ops.wkv.backward(B, T, C, w, u, k, v, gy.contiguous(), gw, gu, gk, gv)
        gw = torch.sum(gw, dim=0)
        gu = torch.sum(gu, dim=0)
        return (None, None, None, gw, gu, gk, gv)


def _grads(fn, device, B, T, C):
    td, tf, k, v = [x.float().to(device).requires_grad_() for x in make_inputs(B, T, C, seed=40)]
    y = fn(B, T, C, td, tf, k, v)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1)).to(device)
    (y * gy).sum().backward()
    return [y.detach(), td.grad, tf.grad, k.grad, v.grad]


def test_rwkv_lm_class_matches_ours(device):
    # B*C = 3*37 is not a multiple of 32, T = 2000 is past RWKV-LM's usual T_MAX: both fine here.
    B, T, C = 3, 2000, 37
    ref = _grads(lambda *a: rwkv_wkv.wkv(*a[3:]), device, B, T, C)
    for fn in (RWKVLM_WKV.apply, rwkv_wkv.WKVFunction.apply):
        got = _grads(fn, device, B, T, C)
        for a, b, name in zip(got, ref, ["y", "time_decay", "time_first", "k", "v"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_legacy_backward_accumulates(device):
    """gw and gu are added to, per batch row (the contract RWKV-LM relies on)."""
    B, T, C = 2, 8, 5
    td, tf, k, v = [x.float().to(device) for x in make_inputs(B, T, C, seed=41)]
    w = -torch.exp(td)
    gy = torch.randn_like(k)
    outs = []
    for start in (0.0, 1.5):
        gw = torch.full((B, C), start, device=device)
        gu = torch.full((B, C), start, device=device)
        gk, gv = torch.empty_like(k), torch.empty_like(k)
        torch.ops.wkv.backward(B, T, C, w, tf, k, v, gy, gw, gu, gk, gv)
        outs.append((gw, gu, gk, gv))
    torch.testing.assert_close(outs[1][0], outs[0][0] + 1.5)
    torch.testing.assert_close(outs[1][1], outs[0][1] + 1.5)
    torch.testing.assert_close(outs[1][2], outs[0][2], rtol=0, atol=0)
    # per-row gw is the time_decay gradient (already multiplied by w)
    g_td, g_tf, _, _, _ = torch.ops.wkv.wkv_backward(td, tf, k, v, None, gy, None)
    torch.testing.assert_close(outs[0][0].sum(0), g_td)
    torch.testing.assert_close(outs[0][1].sum(0), g_tf)
