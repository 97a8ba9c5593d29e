"""rwkv_wkv: the RWKV-4 WKV operator for PyTorch.

    import rwkv_wkv
    y = rwkv_wkv.wkv(time_decay, time_first, k, v)                  # (B, T, C)
    y, state = rwkv_wkv.wkv_with_state(time_decay, time_first, k, v, state)
    torch.ops.wkv.forward(B, T, C, w, u, k, v, y)                   # RWKV-LM's contract
    rwkv_wkv.patch_transformers()        # transformers' RwkvForCausalLM on this kernel

See README.md for the op contract.
"""

from . import reference
from ._library import build_info, cpu_isa, cuda_chunk_length, cuda_plan
from .model import RWKV, RWKVConfig
from .ops import WKVFunction, empty_state, wkv, wkv_with_state
from .transformers_patch import is_transformers_patched, patch_transformers, unpatch_transformers

__all__ = [
    "wkv",
    "wkv_with_state",
    "empty_state",
    "WKVFunction",
    "reference",
    "build_info",
    "cpu_isa",
    "cuda_chunk_length",
    "cuda_plan",
    "RWKV",
    "RWKVConfig",
    "patch_transformers",
    "unpatch_transformers",
    "is_transformers_patched",
]
__version__ = "0.1.0"
