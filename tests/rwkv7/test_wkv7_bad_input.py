"""Malformed calls of the RWKV-7 op raise a clear Python exception naming the argument and what
was expected — in C++ (the kernels' checks), in the fake kernels (torch.compile / meta tensors)
and on the naive path (torch.func) alike; never a crash or a silent wrong answer."""

from __future__ import annotations

import pytest
import torch
from wkv7_helpers import inputs, state

import rwkv_wkv

B, T, H, N = 2, 5, 2, 4
NAMES = ["r", "w", "k", "v", "a", "b"]


def _call(kind, xs, s=None, gy=None, gs=None, ck=None):
    if kind == "op":
        return lambda: torch.ops.wkv.wkv7_forward(*xs, s, True)
    if kind == "bwd":
        g = torch.ones(B, T, H, N, dtype=xs[0].dtype) if gy is None else gy
        return lambda: torch.ops.wkv.wkv7_backward(*xs, s, g, gs, ck)
    if kind == "meta":
        return lambda: torch.ops.wkv.wkv7_forward(*[x.to("meta") for x in xs],
                                                  None if s is None else s.to("meta"), True)
    if kind == "func":  # torch.func.grad: the naive path checks the same
        return lambda: torch.func.grad(lambda r: rwkv_wkv.wkv7(r, *xs[1:], s)[0].sum())(xs[0])
    return lambda: rwkv_wkv.wkv7(*xs, s)


def _with(i, x):
    xs = list(inputs(B, T, H, N, dtype=torch.float32))
    xs[i] = x
    return xs


CASES = {
    "r 3-D": (lambda: [x[..., 0] for x in inputs(B, T, H, N, dtype=torch.float32)], None,
              ValueError, r"4 dimensions \(B, T, H, N\)|head_size"),
    "r int": (lambda: [x.to(torch.int32) for x in inputs(B, T, H, N)], None,
              ValueError, "r must have dtype float32, float64, bfloat16 or float16, got torch.int32"),
    **{f"{n} dtype": (lambda i=i: _with(i, torch.zeros(B, T, H, N, dtype=torch.float64)), None,
                      ValueError, f"{n} must have dtype torch.float32 \\(the same as r\\)")
       for i, n in enumerate(NAMES) if i},
    **{f"{n} shape": (lambda i=i: _with(i, torch.zeros(B, T, H, N + 1)), None,
                      ValueError, f"{n} must have shape \\(B, T, H, N\\) as r")
       for i, n in enumerate(NAMES) if i},
    "N mismatch in k": (lambda: _with(2, torch.zeros(B, T, H * 2, N // 2)), None,
                        ValueError, "k must have shape"),
    "state shape": (lambda: list(inputs(B, T, H, N, dtype=torch.float32)), lambda: torch.zeros(B, H, N, N + 1),
                    ValueError, r"state must have shape \(B, H, N, N\)"),
    "state batch": (lambda: list(inputs(B, T, H, N, dtype=torch.float32)), lambda: torch.zeros(B + 1, H, N, N),
                    ValueError, r"state must have shape \(B, H, N, N\)"),
    "state dtype": (lambda: list(inputs(B, T, H, N, dtype=torch.float32)),
                    lambda: torch.zeros(B, H, N, N, dtype=torch.float64), ValueError, "state must have dtype"),
    "state dtype bf16": (lambda: list(inputs(B, T, H, N, dtype=torch.bfloat16)),
                         lambda: torch.zeros(B, H, N, N, dtype=torch.bfloat16), ValueError, "state must have dtype"),
}


@pytest.mark.parametrize("kind", ["op", "bwd", "meta", "wkv7", "func"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_named_error(case, kind):
    make, make_state, exc, match = CASES[case]
    xs = make()
    if kind == "func" and not xs[0].is_floating_point():
        pytest.skip("torch.func.grad itself needs floating-point inputs")
    s = None if make_state is None else make_state()
    with pytest.raises(exc, match=match):
        _call(kind, xs, s)()


def test_device_mismatch_is_a_runtime_error():
    xs = _with(3, torch.zeros(B, T, H, N, device="meta"))
    with pytest.raises(RuntimeError, match="v is on meta but r is on cpu"):
        torch.ops.wkv.wkv7_forward(*xs, None, False)
    with pytest.raises(RuntimeError, match="v is on meta but r is on cpu"):
        rwkv_wkv.wkv7(*xs)


def test_backward_arguments():
    xs = list(inputs(B, T, H, N, dtype=torch.float32))
    with pytest.raises(ValueError, match="gy must have shape"):
        _call("bwd", xs, gy=torch.ones(B, T + 1, H, N))()
    with pytest.raises(ValueError, match="gy must have dtype torch.float32"):
        _call("bwd", xs, gy=torch.ones(B, T, H, N, dtype=torch.float64))()
    with pytest.raises(ValueError, match=r"gstate_out must have shape \(B, H, N, N\)"):
        _call("bwd", xs, gs=torch.ones(B, H, N))()
    with pytest.raises(ValueError, match=r"checkpoints must have shape \(B, H, ceil\(T / 32\), N, N\)"):
        _call("bwd", xs, ck=torch.zeros(B, H, 2, N, N))()
    with pytest.raises(ValueError, match="checkpoints must have dtype torch.float32"):
        _call("bwd", xs, ck=torch.zeros(B, H, 1, N, N, dtype=torch.float64))()


def test_cuda_tensors_without_cuda_are_an_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises((RuntimeError, AssertionError)):
        rwkv_wkv.wkv7(*inputs(B, T, H, N, device="cuda"))


def test_wrong_state_in_the_naive_path_names_it():
    xs = [x.requires_grad_() for x in inputs(B, T, H, N)]
    s = state(B, H, N + 1)
    with pytest.raises(ValueError, match="state must have shape"):
        torch.func.grad(lambda r: rwkv_wkv.wkv7(r, *xs[1:], s)[0].sum())(xs[0].detach())
