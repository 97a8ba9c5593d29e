"""The fused single-token step for CPU generation: ``torch.ops.wkv.rwkv4_step`` and
``rwkv7_step`` (csrc/step/) run every layer of one token per batch row in one call — no per-op
dispatch, the matrix-vector products threaded over their rows with SIMD dot products over the
weight's own format.

    plan = FusedStep(model)                 # RWKV-4 or RWKV-7; fp32 weights referenced, not copied
    logits = plan.step_(tokens, state)      # as model.step_: the state updated in place
    plan = FusedStep(model, weights="int8") # int8 weights, one float32 scale per row (a copy)

Weight formats: "fp32", "bf16", "fp16" (the matrices in that dtype: half the bytes read per
token), "int8" (symmetric per-row: q = round(w / s), s = max|w_row| / 127; a quarter) and "q4"
(4-bit, one float32 scale per block of 32 inputs: 5 bits per weight, about a sixth), or None for
the model's own dtype. The Python step (``model.step_``) stays the reference the fused
one is tested against (tests/test_fused_step.py).
"""

from __future__ import annotations

import torch

from . import _library

_library.load()

FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8,
           "q4": torch.uint8}


# Fake kernels (shapes only), so that torch.export / AOTInductor can trace a program calling the
# fused step (rwkv_wkv.export --fused): logits (B, vocab) in float32; the state is updated in place.
@torch.library.register_fake("wkv::rwkv4_step")
def _rwkv4_step_fake(x, state, vectors, matrices, scales, eps, eps_out):
    return x.new_empty((x.shape[0], matrices[-1].shape[0]), dtype=torch.float32)


@torch.library.register_fake("wkv::rwkv7_step")
def _rwkv7_step_fake(x, state, vectors, matrices, scales, eps, eps_out, head_size):
    return x.new_empty((x.shape[0], matrices[-1].shape[0]), dtype=torch.float32)


def quantize_rows(w):
    """(int8 matrix, float32 scale per row) of a float matrix: symmetric, round to nearest."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-30) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def quantize_q4(w):
    """(packed uint8 (rows, ceil(cols / 64) * 32), float32 scales (rows, 2 * ceil(cols / 64))) of a
    float matrix: per block of 32 inputs q = round(w / d) in [-8, 7] with d = the block's value of
    largest magnitude / -8 (so that value is exactly -8 d: all 16 levels used); per block of 64
    inputs byte i holds q + 8 of input i (low nibble) and of input 32 + i (high nibble); the row is
    padded with zeros to a multiple of 64 (csrc/step/step.h, Format::Q4)."""
    w = w.detach().float()
    rows, cols = w.shape
    n64 = (cols + 63) // 64
    blocks = torch.zeros(rows, n64 * 64, device=w.device)
    blocks[:, :cols] = w
    blocks = blocks.view(rows, 2 * n64, 32)
    extreme = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True))
    d = extreme / -8.0
    inv = torch.where(d != 0, 1.0 / torch.where(d != 0, d, 1.0), 0.0)
    q = (torch.round(blocks * inv).clamp_(-8, 7) + 8).to(torch.uint8).view(rows, n64, 64)
    packed = q[..., :32] | (q[..., 32:] << 4)
    return packed.reshape(rows, n64 * 32).contiguous(), d.reshape(rows, 2 * n64).contiguous()


def dequantize_q4(packed, scales, cols):
    """The float32 matrix (rows, cols) that quantize_q4's output stands for."""
    rows = packed.shape[0]
    p = packed.view(rows, -1, 32)
    q = torch.cat([p & 0x0F, p >> 4], dim=-1).float() - 8.0  # (rows, n64, 64)
    w = q.view(rows, -1, 32) * scales.view(rows, -1, 1)
    return w.reshape(rows, -1)[:, :cols].contiguous()


def _matrix(w, weights):
    """A weight matrix as the op reads it (row-major, in the chosen format) and its scale."""
    w = w.detach()
    if weights == "int8":
        return quantize_rows(w)
    if weights == "q4":
        return quantize_q4(w)
    dtype = FORMATS[weights] if weights is not None else w.dtype
    return w.to(dtype).contiguous(), w.new_empty(0, dtype=torch.float32)


def _vector(t):
    return t.detach().float().reshape(-1).contiguous()


class FusedStep:
    """The fused step of an RWKV-4 (``RWKV``) or RWKV-7 (``RWKV7``) model on the CPU, with its weight
    matrices in one of FORMATS (default: the model's dtype: float32, bfloat16 or float16)."""

    def __init__(self, model, weights=None):
        if weights is not None and weights not in FORMATS:
            raise ValueError(f"weights must be one of {', '.join(FORMATS)} or None (the model's dtype), "
                             f"got {weights!r}")
        generation = getattr(model, "generation", None)
        if generation not in (4, 7):
            raise ValueError(f"the fused step runs RWKV-4 and RWKV-7 models, got {type(model).__name__}")
        device = model.emb.weight.device
        if device.type != "cpu":
            raise ValueError(f"the fused step is a CPU kernel; the model is on {device}")
        if model.emb.weight.dtype == torch.float64:
            raise ValueError("the fused step computes in float32 (its state too); a float64 model generates with "
                             "the Python step (model.step_)")
        self.model, self.weights, self.generation = model, weights, generation
        self.vectors, self.matrices, self.scales = [], [], []
        (self._rwkv4 if generation == 4 else self._rwkv7)(model)
        self.eps, self.eps_out = float(model.config.layer_norm_eps), float(model.ln_out.eps)
        self.weight_bytes = sum(m.numel() * m.element_size() for m in self.matrices) + sum(
            s.numel() * 4 for s in self.scales)

    def _add(self, w, transpose=False):
        q, s = _matrix(w.detach().t() if transpose else w, self.weights)
        self.matrices.append(q)
        self.scales.append(s)

    def _rwkv4(self, model):
        blocks = model.blocks
        self.vectors += [_vector(blocks[0].ln0.weight), _vector(blocks[0].ln0.bias)]
        for b in blocks:
            att, ffn = b.att, b.ffn
            self.vectors += [_vector(b.ln1.weight), _vector(b.ln1.bias), _vector(b.ln2.weight), _vector(b.ln2.bias),
                             -torch.exp(_vector(att.time_decay)), _vector(att.time_first), _vector(att.time_mix_k),
                             _vector(att.time_mix_v), _vector(att.time_mix_r), _vector(ffn.time_mix_k),
                             _vector(ffn.time_mix_r)]
            for linear in (att.key, att.value, att.receptance, att.output, ffn.key, ffn.receptance, ffn.value):
                self._add(linear.weight)
        self.vectors += [_vector(model.ln_out.weight), _vector(model.ln_out.bias)]
        self._add(model.head.weight)

    def _rwkv7(self, model):
        blocks = model.blocks
        self.vectors += [_vector(blocks[0].ln0.weight), _vector(blocks[0].ln0.bias)]
        for b in blocks:
            att, ffn = b.att, b.ffn
            self.vectors += [_vector(t) for t in (
                b.ln1.weight, b.ln1.bias, b.ln2.weight, b.ln2.bias, att.x_r, att.x_w, att.x_k, att.x_v, att.x_a,
                att.x_g, att.w0, att.a0, att.v0, att.k_k, att.k_a, att.r_k, att.ln_x.weight, att.ln_x.bias,
                ffn.x_k)]
            for linear in (att.receptance, att.key, att.value, att.output):
                self._add(linear.weight)
            for name in ("w", "a", "v", "g"):  # the low-rank pairs as (out, in): x @ w1 is w1.T x
                self._add(getattr(att, f"{name}1"), transpose=True)
                self._add(getattr(att, f"{name}2"), transpose=True)
            self._add(ffn.key.weight)
            self._add(ffn.value.weight)
        self.vectors += [_vector(model.ln_out.weight), _vector(model.ln_out.bias)]
        self._add(model.head.weight)
        self.head_size = model.config.head_size

    @torch.no_grad()
    def step_(self, tokens, state):
        """One token per batch row: logits (B, vocab) in float32; ``state`` (float32, the model's
        layout) updated in place, as ``model.step_``."""
        x = self.model.emb.weight[tokens.view(-1)].float()
        if self.generation == 4:
            return torch.ops.wkv.rwkv4_step(x, state, self.vectors, self.matrices, self.scales, self.eps,
                                            self.eps_out)
        return torch.ops.wkv.rwkv7_step(x, state, self.vectors, self.matrices, self.scales, self.eps, self.eps_out,
                                        self.head_size)
