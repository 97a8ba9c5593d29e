"""The fused single-token step for CPU generation: ``torch.ops.wkv.rwkv4_step`` (csrc/step/) runs
every layer of one token per batch row in one call — no per-op dispatch, the matrix-vector
products threaded over their rows with SIMD dot products over the weight's own format.

    plan = FusedStep(model)                 # or model.fuse_step(); weights referenced, not copied
    logits = plan.step_(tokens, state)      # as model.step_: the state (B, L, 5, C) in place
    plan = FusedStep(model, weights="int8") # int8 weights, one float32 scale per row (a copy)

Weight formats: "fp32", "bf16", "fp16" (the matrices in that dtype: half the bytes read per
token) and "int8" (symmetric per-row: q = round(w / s), s = max|w_row| / 127; a quarter), or
None for the model's own dtype. The Python step (``model.step_``) stays the reference the fused
one is tested against (tests/test_fused_step.py).
"""

from __future__ import annotations

import torch

from . import _library

_library.load()

FORMATS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8}


def quantize_rows(w):
    """(int8 matrix, float32 scale per row) of a float matrix: symmetric, round to nearest."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-30) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def _matrix(w, weights):
    """A weight matrix as the op reads it (row-major, in the chosen format) and its scale."""
    w = w.detach()
    if weights == "int8":
        return quantize_rows(w)
    dtype = FORMATS[weights] if weights is not None else w.dtype
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        dtype = torch.float32  # (a float64 model: its fused step reads float32 weights)
    return w.to(dtype).contiguous(), w.new_empty(0, dtype=torch.float32)


def _vector(t):
    return t.detach().float().reshape(-1).contiguous()


class FusedStep:
    """The fused step of an RWKV-4 model (``rwkv4.model.RWKV``) on the CPU, with its weights in
    one of FORMATS (default: the model's dtype)."""

    def __init__(self, model, weights=None):
        if weights is not None and weights not in FORMATS:
            raise ValueError(f"weights must be one of {', '.join(FORMATS)} or None (the model's dtype), "
                             f"got {weights!r}")
        if getattr(model, "generation", None) != 4:
            raise ValueError(f"the fused step supports RWKV-4 models so far, got {type(model).__name__}")
        device = model.emb.weight.device
        if device.type != "cpu":
            raise ValueError(f"the fused step is a CPU kernel; the model is on {device}")
        self.model, self.weights = model, weights
        blocks = model.blocks
        vectors = [_vector(blocks[0].ln0.weight), _vector(blocks[0].ln0.bias)]
        matrices, scales = [], []

        def add(linear):
            q, s = _matrix(linear.weight, weights)
            matrices.append(q)
            scales.append(s)

        for b in blocks:
            att, ffn = b.att, b.ffn
            vectors += [_vector(b.ln1.weight), _vector(b.ln1.bias), _vector(b.ln2.weight), _vector(b.ln2.bias),
                        -torch.exp(_vector(att.time_decay)), _vector(att.time_first), _vector(att.time_mix_k),
                        _vector(att.time_mix_v), _vector(att.time_mix_r), _vector(ffn.time_mix_k),
                        _vector(ffn.time_mix_r)]
            for linear in (att.key, att.value, att.receptance, att.output, ffn.key, ffn.receptance, ffn.value):
                add(linear)
        vectors += [_vector(model.ln_out.weight), _vector(model.ln_out.bias)]
        add(model.head)
        self.vectors, self.matrices, self.scales = vectors, matrices, scales
        self.eps, self.eps_out = float(model.config.layer_norm_eps), float(model.ln_out.eps)
        self.weight_bytes = sum(m.numel() * m.element_size() for m in matrices) + sum(
            s.numel() * 4 for s in scales)

    @torch.no_grad()
    def step_(self, tokens, state):
        """One token per batch row: logits (B, vocab) in float32; ``state`` (B, L, 5, C) float32
        updated in place, as ``model.step_``."""
        x = self.model.emb.weight[tokens.view(-1)].float()
        return torch.ops.wkv.rwkv4_step(x, state, self.vectors, self.matrices, self.scales, self.eps, self.eps_out)
