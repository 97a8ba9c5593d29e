"""The ONNX translation of ``wkv.wkv_forward`` (RWKV-4), for ``torch.onnx.export(..., dynamo=True)``.

ONNX has no WKV operator, so the exporter is given this function for it (``rwkv_wkv.export``
passes ``custom_translation_table={torch.ops.wkv.wkv_forward.default: wkv_forward}``). It writes
the recurrence of csrc/rwkv4/wkv.h in ONNX operators, with the same overflow-free arithmetic:
the state is (aa, bb, pp), sums scaled by exp(-pp), and every exponential is of a difference
against a running maximum (k of any size, e.g. +-1000, stays finite).

- One token (T = 1, the RNN step): the step's few elementwise operators, no loop.
- A sequence (GPT mode, T dynamic): an ONNX ``Scan`` over T whose body is the same step; the
  state (aa, bb, pp) is its carried value, y its scan output.

float32 only (the kernels' math dtype for float32; other dtypes raise rather than round).
Needs the optional ``onnxscript`` (``pip install 'rwkv_wkv[onnx]'``).
"""

from __future__ import annotations

import onnxscript
from onnxscript import FLOAT
from onnxscript import ir as _ir
from onnxscript import opset18 as op

# the state's exponent before any token: e^{-1e38} is exactly 0 in float32 (csrc/rwkv4/wkv.h)
EMPTY_EXPONENT = -1e38


@onnxscript.script()
def wkv4_step(w: FLOAT[...], u: FLOAT[...], k: FLOAT[...], v: FLOAT[...], aa: FLOAT[...], bb: FLOAT[...],
              pp: FLOAT[...]) -> tuple[FLOAT[...], FLOAT[...], FLOAT[...], FLOAT[...]]:
    """One token for (B, C) rows: w = -exp(time_decay), u = time_first. Returns y, aa, bb, pp."""
    ww = u + k
    p = op.Max(pp, ww)
    e1 = op.Exp(pp - p)
    e2 = op.Exp(ww - p)
    y = (e1 * aa + e2 * v) / (e1 * bb + e2)
    ww2 = w + pp
    p2 = op.Max(ww2, k)
    f1 = op.Exp(ww2 - p2)
    f2 = op.Exp(k - p2)
    aa2 = f1 * aa + f2 * v
    bb2 = f1 * bb + f2
    return y, aa2, bb2, p2


@onnxscript.script()
def wkv4_scan(w: FLOAT[...], u: FLOAT[...], k: FLOAT[...], v: FLOAT[...], aa: FLOAT[...], bb: FLOAT[...],
              pp: FLOAT[...]) -> tuple[FLOAT[...], FLOAT[...], FLOAT[...], FLOAT[...]]:
    """k, v (B, T, C): the step scanned over T. Returns y (B, T, C) and the final aa, bb, pp."""

    @onnxscript.graph()
    def body(aa_in, bb_in, pp_in, w_in, u_in, k_t, v_t):
        # (the step's arithmetic as in wkv4_step: a Scan body is a graph, not a function call)
        ww = u_in + k_t
        p = op.Max(pp_in, ww)
        e1 = op.Exp(pp_in - p)
        e2 = op.Exp(ww - p)
        y_t = (e1 * aa_in + e2 * v_t) / (e1 * bb_in + e2)
        ww2 = w_in + pp_in
        p2 = op.Max(ww2, k_t)
        f1 = op.Exp(ww2 - p2)
        f2 = op.Exp(k_t - p2)
        aa_out = f1 * aa_in + f2 * v_t
        bb_out = f1 * bb_in + f2
        w_out = op.Identity(w_in)
        u_out = op.Identity(u_in)
        return aa_out, bb_out, p2, w_out, u_out, y_t

    aa_o, bb_o, pp_o, w_o, u_o, y = op.Scan(aa, bb, pp, w, u, k, v, body=body, num_scan_inputs=2,
                                           scan_input_axes=[1, 1], scan_output_axes=[1])
    return y, aa_o, bb_o, pp_o


def _require_float32(name, x):
    if x.dtype != _ir.DataType.FLOAT:
        raise TypeError(f"the ONNX translation of wkv.wkv_forward takes float32 only: {name} is {x.dtype}; "
                        "export the model in float32")


def _filled(shape, value):
    return op.ConstantOfShape(shape, value=_ir.tensor([value], dtype=_ir.DataType.FLOAT))


def wkv_forward(time_decay, time_first, k, v, state=None, save_checkpoints=False):
    """wkv.wkv_forward(time_decay, time_first, k, v, state, save_checkpoints) in ONNX: returns
    (y (B, T, C), state (B, 3, C), checkpoints (B, 0, 3, C): none are saved for inference)."""
    for name, x in (("time_decay", time_decay), ("time_first", time_first), ("k", k), ("v", v), ("state", state)):
        if x is not None:
            _require_float32(name, x)
    B = op.Shape(k, start=0, end=1)
    C = op.Shape(k, start=2, end=3)
    rows = op.Concat(B, C, axis=0)
    if state is None:
        aa = bb = _filled(rows, 0.0)
        pp = _filled(rows, EMPTY_EXPONENT)
    else:
        aa, bb, pp = (op.Gather(state, op.Constant(value_int=i), axis=1) for i in range(3))
    w = op.Neg(op.Exp(time_decay))
    if k.shape is not None and len(k.shape) == 3 and k.shape[1] == 1:  # the RNN step: no loop
        one = op.Constant(value_ints=[1])
        y, aa, bb, pp = wkv4_step(w, time_first, op.Squeeze(k, one), op.Squeeze(v, one), aa, bb, pp)
        y = op.Unsqueeze(y, one)
    else:
        y, aa, bb, pp = wkv4_scan(w, time_first, k, v, aa, bb, pp)
    one = op.Constant(value_ints=[1])
    new_state = op.Concat(op.Unsqueeze(aa, one), op.Unsqueeze(bb, one), op.Unsqueeze(pp, one), axis=1)
    checkpoints = _filled(op.Concat(B, op.Constant(value_ints=[0, 3]), C, axis=0), 0.0)
    return y, new_state, checkpoints
