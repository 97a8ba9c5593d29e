"""Every RWKV-4 checkpoint format, read and written, with one-line errors.

- an RWKV-LM v4 ``.pth``: the bare state dict (our parameter names are RWKV-LM's);
- a Hugging Face RWKV directory (hf.py: transformers' save_pretrained layout);
- our trainer's checkpoint: a ``ckpt/`` directory (rwkv_wkv/checkpoint.py), or an older single
  ``ckpt.pt`` file (a dict with "model" and "config").

``load`` tells them apart, and every unusable file is FileNotFoundError (a missing path or
weight file) or one ValueError naming the file and what is wrong with it. The model class is
passed in (``RWKV.from_checkpoint`` calls ``load(cls, ...)``), so this module needs only the
config, and the model file needs nothing of the formats.
"""

from __future__ import annotations

import os

import torch

from .. import checkpoint as trainer_checkpoint
from ..errors import first_line
from ..formats import build as _build
from ..formats import config_from_dict, save_state_dict
from . import hf
from .config import RWKVConfig


def config_from_state_dict(sd, ctx_len=1024) -> RWKVConfig:
    """Infers vocab_size, n_embd, n_layer and dim_ffn from an RWKV-LM v4 state dict."""
    if not isinstance(sd.get("emb.weight"), torch.Tensor) or sd["emb.weight"].dim() != 2:
        raise ValueError("not an RWKV-4 state dict: it has no 2-D 'emb.weight'")
    vocab, C = sd["emb.weight"].shape
    layers = {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}
    n_layer = max(layers) + 1 if layers else 0
    dim_ffn = sd["blocks.0.ffn.key.weight"].shape[0] if "blocks.0.ffn.key.weight" in sd else 4 * C
    return RWKVConfig(vocab_size=vocab, n_layer=n_layer, n_embd=C, ctx_len=ctx_len, dim_ffn=dim_ffn)


def _config(path, cfg, ctx_len):
    return config_from_dict(RWKVConfig, path, cfg, ctx_len, 4)


def load(cls, path, map_location="cpu", ctx_len=None):
    """The model ``cls(config)`` with the weights of the checkpoint at ``path`` (any format)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        if trainer_checkpoint.is_checkpoint(path):
            config = _config(path, trainer_checkpoint.read_state(path)["config"], ctx_len)
            model = cls(config)
            model.load_state_dict(trainer_checkpoint.read_weights(path, model.state_dict()), strict=True)
            return model.to(map_location)
        if not os.path.isfile(os.path.join(path, hf.CONFIG)):
            raise ValueError(f"{path}: a directory, but not a Hugging Face RWKV checkpoint "
                             f"(no {hf.CONFIG} in it) nor a trainer checkpoint (no {trainer_checkpoint.STATE})")
        config, sd = hf.load_hf(path, ctx_len)
        return _build(cls, config, sd, path).to(map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e)})") from e
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        if not isinstance(obj["config"], dict) or not isinstance(obj["model"], dict):
            raise ValueError(f"{path}: a trainer checkpoint whose 'config' or 'model' is not a dict")
        return _build(cls, _config(path, obj["config"], ctx_len), obj["model"], path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict or a trainer checkpoint, got {type(obj).__name__}")
    try:
        config = config_from_state_dict(obj, ctx_len or 1024)
    except (ValueError, AttributeError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: {first_line(e)}") from e
    return _build(cls, config, obj, path)


def save_rwkv_lm(model, path):
    """The bare state dict (RWKV-LM v4 format: same keys and shapes), written atomically."""
    save_state_dict(model.state_dict(), path)


def save_hf(model, directory):
    """A Hugging Face directory that transformers' RwkvForCausalLM.from_pretrained loads."""
    hf.save_hf(model, directory)
