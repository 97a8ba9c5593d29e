"""rwkv_wkv: RWKV's WKV operators for PyTorch, and RWKV-4 and RWKV-7 language models on them.

    import rwkv_wkv
    y = rwkv_wkv.wkv(time_decay, time_first, k, v)                  # (B, T, C)
    y, state = rwkv_wkv.wkv_with_state(time_decay, time_first, k, v, state)
    y, state = rwkv_wkv.wkv7(r, w, k, v, a, b, state)               # RWKV-7, (B, T, H, N)
    model = rwkv_wkv.from_checkpoint(path)   # RWKV (RWKV-4) or RWKV7, whichever the file holds
    torch.ops.wkv.forward(B, T, C, w, u, k, v, y)                   # RWKV-LM's contract
    rwkv_wkv.patch_transformers()        # transformers' RwkvForCausalLM on this kernel

Layout: one subpackage per RWKV generation (``rwkv_wkv.rwkv4``: op, references, model,
checkpoint formats; ``rwkv_wkv.rwkv7``: the same for RWKV-7), beside what they share
(``models``: ``from_checkpoint`` for any generation; ``lm`` / ``layers`` / ``formats``: what the
models and their checkpoint formats share; ``_library``: the compiled library; ``tokenizer``,
``data``/``tokens``, ``sampling``, ``checkpoint``/``training``/``train``: the one trainer,
``generate``, ``export``: pt2 / AOTInductor / ONNX programs, ``errors``). See README.md and docs/.
"""

import sys as _sys

from ._library import build_info, cpu_isa, cuda_chunk_length, cuda_plan, library_path, thread_pool
from .models import from_checkpoint
from .rwkv4 import hf as _hf
from .rwkv4 import model as _model
from .rwkv4 import ops as _ops
from .rwkv4 import reference
from .rwkv4 import transformers_patch as _transformers_patch
from .rwkv4.config import RWKVConfig
from .rwkv4.model import RWKV
from .rwkv4.ops import WKVFunction, wkv, wkv_with_state
from .rwkv4.state import empty_state
from .rwkv4.transformers_patch import is_transformers_patched, patch_transformers, unpatch_transformers
from .rwkv7.config import RWKV7Config
from .rwkv7.model import RWKV7
from .rwkv7.ops import RUN_CUDA_RWKV7g, WKV7Function, wkv7

# The modules' names before generations had rooms of their own keep working
# (``import rwkv_wkv.model``, ``from rwkv_wkv.reference import wkv_exact``): the same modules.
for _name, _module in {"model": _model, "ops": _ops, "reference": reference, "hf": _hf,
                       "transformers_patch": _transformers_patch}.items():
    _sys.modules[f"{__name__}.{_name}"] = _module
    globals()[_name] = _module
del _name, _module

__all__ = [
    "wkv",
    "wkv_with_state",
    "wkv7",
    "WKV7Function",
    "RUN_CUDA_RWKV7g",
    "empty_state",
    "WKVFunction",
    "reference",
    "build_info",
    "library_path",
    "cpu_isa",
    "cuda_chunk_length",
    "thread_pool",
    "cuda_plan",
    "RWKV",
    "RWKVConfig",
    "RWKV7",
    "RWKV7Config",
    "from_checkpoint",
    "patch_transformers",
    "unpatch_transformers",
    "is_transformers_patched",
]
__version__ = "0.1.0"
