"""The ONNX translation of ``wkv.wkv7_forward`` (RWKV-7), for ``torch.onnx.export(..., dynamo=True)``.

ONNX has no RWKV-7 WKV operator, so the exporter is given this function for it (``rwkv_wkv.export``
passes it in ``custom_translation_table``). Per head, with S (N x N; S[i][j], i the value index):

    S_t = S_{t-1} diag(d_t) + (S_{t-1} a_t) b_t^T + v_t k_t^T,  d_t = exp(-exp(w_t)),  y_t = S_t r_t

- One token (T = 1, the RNN step): the step's operators, no loop.
- A sequence (GPT mode, T dynamic): an ONNX ``Scan`` over T carrying S, scanning r, d, k, v, a, b.

float32 only (the kernels' math dtype for float32; other dtypes raise rather than round).
Needs the optional ``onnxscript`` (``pip install 'rwkv_wkv[onnx]'``).
"""

from __future__ import annotations

import onnxscript
from onnxscript import FLOAT
from onnxscript import ir as _ir
from onnxscript import opset18 as op


@onnxscript.script()
def wkv7_step(S: FLOAT[...], r: FLOAT[...], d: FLOAT[...], k: FLOAT[...], v: FLOAT[...], a: FLOAT[...],
              b: FLOAT[...]) -> tuple[FLOAT[...], FLOAT[...]]:
    """One token: S (B, H, N, N); r, d, k, v, a, b (B, H, N), d the decay. Returns y (B, H, N), S."""
    col = op.Constant(value_ints=[-1])  # as a column: (B, H, N, 1)
    row = op.Constant(value_ints=[-2])  # as a row: (B, H, 1, N)
    sa = op.MatMul(S, op.Unsqueeze(a, col))
    S2 = S * op.Unsqueeze(d, row) + sa * op.Unsqueeze(b, row) + op.Unsqueeze(v, col) * op.Unsqueeze(k, row)
    y = op.Squeeze(op.MatMul(S2, op.Unsqueeze(r, col)), col)
    return y, S2


@onnxscript.script()
def wkv7_scan(S: FLOAT[...], r: FLOAT[...], d: FLOAT[...], k: FLOAT[...], v: FLOAT[...], a: FLOAT[...],
              b: FLOAT[...]) -> tuple[FLOAT[...], FLOAT[...]]:
    """r, d, k, v, a, b (B, T, H, N): the step scanned over T. Returns y (B, T, H, N) and the final S."""

    @onnxscript.graph()
    def body(S_in, r_t, d_t, k_t, v_t, a_t, b_t):
        # (the step's arithmetic as in wkv7_step: a Scan body is a graph, not a function call)
        col = op.Constant(value_ints=[-1])
        row = op.Constant(value_ints=[-2])
        sa = op.MatMul(S_in, op.Unsqueeze(a_t, col))
        S_out = (S_in * op.Unsqueeze(d_t, row) + sa * op.Unsqueeze(b_t, row)
                 + op.Unsqueeze(v_t, col) * op.Unsqueeze(k_t, row))
        y_t = op.Squeeze(op.MatMul(S_out, op.Unsqueeze(r_t, col)), col)
        return S_out, y_t

    S_o, y = op.Scan(S, r, d, k, v, a, b, body=body, num_scan_inputs=6,
                     scan_input_axes=[1, 1, 1, 1, 1, 1], scan_output_axes=[1])
    return y, S_o


def wkv7_forward(r, w, k, v, a, b, state=None, save_checkpoints=False):
    """wkv.wkv7_forward(r, w, k, v, a, b, state, save_checkpoints) in ONNX: returns (y (B, T, H, N),
    state (B, H, N, N), checkpoints (B, H, 0, N, N): none are saved for inference)."""
    for name, x in (("r", r), ("w", w), ("k", k), ("v", v), ("a", a), ("b", b), ("state", state)):
        if x is not None and x.dtype != _ir.DataType.FLOAT:
            raise TypeError(f"the ONNX translation of wkv.wkv7_forward takes float32 only: {name} is {x.dtype}; "
                            "export the model in float32")
    BH = op.Concat(op.Shape(r, start=0, end=1), op.Shape(r, start=2, end=3), axis=0)
    N = op.Shape(r, start=3, end=4)
    zero = _ir.tensor([0.0], dtype=_ir.DataType.FLOAT)
    S = op.ConstantOfShape(op.Concat(BH, N, N, axis=0), value=zero) if state is None else state
    d = op.Exp(op.Neg(op.Exp(w)))
    if r.shape is not None and len(r.shape) == 4 and r.shape[1] == 1:  # the RNN step: no loop
        one = op.Constant(value_ints=[1])
        y, S = wkv7_step(S, *(op.Squeeze(x, one) for x in (r, d, k, v, a, b)))
        y = op.Unsqueeze(y, one)
    else:
        y, S = wkv7_scan(S, r, d, k, v, a, b)
    checkpoints = op.ConstantOfShape(op.Concat(BH, op.Constant(value_ints=[0]), N, N, axis=0), value=zero)
    return y, S, checkpoints
