"""The RWKV-4 WKV state, as the op, the references and the model share it.

Per batch row and channel the state is (aa, bb, pp): numerator and denominator of the running
weighted average, scaled by e^-pp, in the math dtype (float32; float64 for float64 inputs).
The empty state is aa = bb = 0 with pp = EMPTY_EXPONENT, so e^pp is exactly 0.
"""

from __future__ import annotations

import torch

EMPTY_EXPONENT = -1e38  # the kernels' -1e38f


def math_dtype(k: torch.Tensor) -> torch.dtype:
    """The dtype WKV computes in for sequences of k's dtype: float64 for float64, else float32."""
    return torch.float64 if k.dtype == torch.float64 else torch.float32


def empty_state(B: int, C: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The empty state (B, 3, C): aa = bb = 0, pp = -1e38 (so e^pp is exactly 0)."""
    state = torch.zeros((B, 3, C), device=device, dtype=dtype)
    state[:, 2] = EMPTY_EXPONENT
    return state
