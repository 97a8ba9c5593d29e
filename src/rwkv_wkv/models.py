"""Any checkpoint, any generation: ``from_checkpoint(path)`` tells RWKV-4 from RWKV-7 and
returns the model of the right class (``rwkv4.model.RWKV`` or ``rwkv7.model.RWKV7``).

    model = rwkv_wkv.from_checkpoint("RWKV-x070-World-0.1B.pth")       # an RWKV7
    model = rwkv_wkv.from_checkpoint("rwkv-4-169m-pile/")              # an RWKV

How: a trainer checkpoint by its config (``generation: 7``), a Hugging Face directory by its
model_type ("rwkv": RWKV-4; "rwkv7": fla-hub's RWKV-7), a ``.pth`` by its parameter names.
Anything unusable is FileNotFoundError or a one-line ValueError from the generation's loader.
"""

from __future__ import annotations

import os

import torch

from . import checkpoint as trainer_checkpoint
from .formats import generation_of, hf_model_type
from .rwkv4.config import RWKVConfig
from .rwkv4.model import RWKV
from .rwkv7 import checkpoints as checkpoints7
from .rwkv7.config import RWKV7Config
from .rwkv7.model import RWKV7

MODELS = {4: RWKV, 7: RWKV7}


def generation_of_checkpoint(path) -> int:
    """4 or 7: the generation of the checkpoint at ``path`` (4 when nothing says 7, so that the
    RWKV-4 loader reports what is wrong with an unusable file)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if trainer_checkpoint.is_checkpoint(path):
            try:
                config = trainer_checkpoint.read_state(path)["config"]
            except (ValueError, KeyError):
                return 4
            return 7 if config.get("generation") == 7 else 4
        return 7 if hf_model_type(path) in checkpoints7.HF_MODEL_TYPES else 4
    if os.path.isfile(path):
        try:  # memory-mapped: the names only, not the weights' bytes (the loader reads them)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:
            return 4
        if isinstance(obj, dict):
            return generation_of(obj) or 4
    return 4


def from_checkpoint(path, map_location="cpu", ctx_len=None):
    """The model of any supported checkpoint, RWKV-4 or RWKV-7 (see the module's docstring)."""
    return MODELS[generation_of_checkpoint(path)].from_checkpoint(path, map_location=map_location, ctx_len=ctx_len)


def new_model(generation: int, **config):
    """A new model of ``generation`` (4 or 7) from config fields (RWKVConfig / RWKV7Config)."""
    if generation == 7:
        return RWKV7(RWKV7Config(**config))
    if generation == 4:
        return RWKV(RWKVConfig(**config))
    raise ValueError(f"generation must be 4 or 7, got {generation!r}")
