"""Our kernel inside Hugging Face transformers' RWKV: one call, undoable.

    import rwkv_wkv
    rwkv_wkv.patch_transformers()      # RwkvForCausalLM now computes its WKV with rwkv_wkv
    rwkv_wkv.unpatch_transformers()    # back to transformers' own

transformers' RWKV attention (``RwkvSelfAttention.forward``) calls the module-level function
``modeling_rwkv.rwkv_linear_attention(time_decay, time_first, key, value, state, return_state)``.
Without this patch that is a Python loop over T on the CPU (and, on CUDA, a kernel downloaded
from the hub at run time, capped at ``config.context_length``). The patch replaces that one
function, and nothing else, with ``rwkv_wkv.wkv_with_state``: CPU and CUDA, any T, the state in
and out (so ``generate(..., use_cache=True)`` works), float32 / bfloat16 / float16 (float64 too),
training and inference, offline. It first checks that the installed transformers' code is what
it replaces (else RuntimeError: never a silent no-op). transformers stays optional.
"""

from __future__ import annotations

import importlib
import inspect

import torch

from .ops import wkv_with_state

_MODULE = "transformers.models.rwkv.modeling_rwkv"
_FUNCTION = "rwkv_linear_attention"
_SIGNATURE = ["time_decay", "time_first", "key", "value", "state", "return_state"]
_original = None  # transformers' function while patched


def rwkv_linear_attention(time_decay, time_first, key, value, state=None, return_state=False):
    """transformers' ``rwkv_linear_attention``, computed by rwkv_wkv's kernel.

    key, value: (B, T, C) of one dtype; time_decay, time_first: (C,) (the model's dtype; cast to
    the math dtype here, differentiably); state: None or transformers' per-layer triple
    (numerator, denominator, max exponent), each (B, C). Returns (output of key's dtype, the new
    triple or None), as transformers' own does: the state is returned when asked for or given.
    """
    math = torch.float64 if key.dtype == torch.float64 else torch.float32
    ours = None if state is None else torch.stack([s.to(math) for s in state], dim=1)  # (B, 3, C)
    out, new_state = wkv_with_state(time_decay.to(math), time_first.to(math), key, value, ours)
    if return_state or state is not None:
        return out, [new_state[:, 0], new_state[:, 1], new_state[:, 2]]
    return out, None


def _modeling_module():
    try:
        return importlib.import_module(_MODULE)
    except ImportError as e:
        raise ImportError("patch_transformers needs Hugging Face transformers with its RWKV model "
                          f"(pip install transformers): {e}") from e


def _check_expected(module):
    """transformers' RWKV code must call the function we replace, with the arguments we take."""
    import transformers

    where = f"transformers {transformers.__version__} ({module.__file__})"
    fn = getattr(module, _FUNCTION, None)
    if not callable(fn):
        raise RuntimeError(f"{where} has no {_FUNCTION}(); its RWKV code is not what "
                           f"rwkv_wkv.patch_transformers replaces, so nothing was patched")
    params = list(inspect.signature(fn).parameters)
    if params != _SIGNATURE:
        raise RuntimeError(f"{where}: {_FUNCTION}{tuple(params)} does not take {tuple(_SIGNATURE)}; "
                           f"nothing was patched")
    attention = getattr(module, "RwkvSelfAttention", None)
    if attention is None or _FUNCTION not in attention.forward.__code__.co_names:
        raise RuntimeError(f"{where}: RwkvSelfAttention.forward does not call {_FUNCTION}(); "
                           f"replacing it would change nothing, so nothing was patched")


def patch_transformers():
    """Makes transformers' RWKV models (RwkvModel, RwkvForCausalLM) use rwkv_wkv's kernel.

    Idempotent; undone by :func:`unpatch_transformers`. Raises ImportError without transformers
    and RuntimeError when the installed transformers' RWKV code is not what this replaces.
    """
    global _original
    module = _modeling_module()
    if _original is not None and getattr(module, _FUNCTION) is rwkv_linear_attention:
        return
    _check_expected(module)
    _original = getattr(module, _FUNCTION)
    setattr(module, _FUNCTION, rwkv_linear_attention)


def unpatch_transformers():
    """Restores transformers' own WKV (a no-op when not patched)."""
    global _original
    if _original is None:
        return
    module = _modeling_module()
    if getattr(module, _FUNCTION) is rwkv_linear_attention:
        setattr(module, _FUNCTION, _original)
    _original = None


def is_transformers_patched() -> bool:
    """Whether transformers' RWKV currently computes its WKV with rwkv_wkv."""
    if _original is None:
        return False
    return getattr(_modeling_module(), _FUNCTION) is rwkv_linear_attention
