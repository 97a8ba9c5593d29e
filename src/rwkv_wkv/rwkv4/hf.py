"""Hugging Face format for RWKV-4, both ways: the directories transformers'
``RwkvForCausalLM.save_pretrained`` writes (config.json + model.safetensors, sharded safetensors
with an index, or pytorch_model.bin) and reads with ``from_pretrained``.

The weights are the same tensors under other names (``rwkv.blocks.0.attention.time_decay`` is
our ``blocks.0.att.time_decay``), so conversion is a renaming. transformers is not needed here;
``safetensors`` is (``pip install "rwkv_wkv[hf]"``).
"""

from __future__ import annotations

import os
import re

from ..formats import hf_model_type, read_hf_config, write_hf
from ..formats import read_hf_tensors as _read_tensors
from .config import RWKVConfig

CONFIG = "config.json"

# ours -> Hugging Face, per block (the rest is in _TOP)
_BLOCK = {
    "ln0": "pre_ln",
    "ln1": "ln1",
    "ln2": "ln2",
    "att.time_decay": "attention.time_decay",
    "att.time_first": "attention.time_first",
    "att.time_mix_k": "attention.time_mix_key",
    "att.time_mix_v": "attention.time_mix_value",
    "att.time_mix_r": "attention.time_mix_receptance",
    "att.key": "attention.key",
    "att.value": "attention.value",
    "att.receptance": "attention.receptance",
    "att.output": "attention.output",
    "ffn.time_mix_k": "feed_forward.time_mix_key",
    "ffn.time_mix_r": "feed_forward.time_mix_receptance",
    "ffn.key": "feed_forward.key",
    "ffn.receptance": "feed_forward.receptance",
    "ffn.value": "feed_forward.value",
}
_TOP = {"emb": "rwkv.embeddings", "ln_out": "rwkv.ln_out", "head": "head"}


def _to_hf_name(name: str) -> str:
    m = re.fullmatch(r"blocks\.(\d+)\.(.+?)((?:\.weight|\.bias)?)", name)
    if m:
        layer, inner, suffix = m.groups()
        if inner in _BLOCK:
            return f"rwkv.blocks.{layer}.{_BLOCK[inner]}{suffix}"
    for ours, theirs in _TOP.items():
        if name.startswith(ours + "."):
            return theirs + name[len(ours):]
    raise KeyError(f"no Hugging Face name for parameter {name!r}")


_FROM_HF_BLOCK = {v: k for k, v in _BLOCK.items()}
_FROM_HF_TOP = {v: k for k, v in _TOP.items()}


def _from_hf_name(name: str) -> str | None:
    """Our name for a Hugging Face tensor name; None for tensors we do not use."""
    m = re.fullmatch(r"rwkv\.blocks\.(\d+)\.(.+?)((?:\.weight|\.bias)?)", name)
    if m:
        layer, inner, suffix = m.groups()
        if inner in _FROM_HF_BLOCK:
            return f"blocks.{layer}.{_FROM_HF_BLOCK[inner]}{suffix}"
        return None
    for theirs, ours in _FROM_HF_TOP.items():
        if name.startswith(theirs + "."):
            return ours + name[len(theirs):]
    return None


def is_hf_directory(path) -> bool:
    """A directory holding a Hugging Face RWKV(-4) config.json."""
    return os.path.isdir(path) and hf_model_type(path) == "rwkv"


def _read_config(directory):
    """The RWKV config.json of `directory`, checked; ValueError naming the file otherwise."""
    return read_hf_config(directory, ("rwkv",), "a Hugging Face RWKV")


def load_hf(directory, ctx_len=None):
    """(RWKVConfig, state dict with our names) from a Hugging Face RWKV directory."""
    cfg = _read_config(directory)
    hidden = cfg["hidden_size"]
    att = cfg.get("attention_hidden_size") or hidden
    if att != hidden:
        raise ValueError(f"{directory}: attention_hidden_size {att} != hidden_size {hidden}; RWKV-4 as "
                         f"implemented here has square attention matrices")
    try:
        config = RWKVConfig(
            vocab_size=cfg["vocab_size"],
            n_layer=cfg["num_hidden_layers"],
            n_embd=hidden,
            ctx_len=ctx_len or cfg.get("context_length", 1024),
            dim_ffn=cfg.get("intermediate_size") or 4 * hidden,
            layer_norm_eps=cfg.get("layer_norm_epsilon", 1e-5),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(directory, CONFIG)}: {e}") from e
    tensors = _read_tensors(directory)
    sd = {}
    for name, t in tensors.items():
        ours = _from_hf_name(name)
        if ours is not None:
            sd[ours] = t
    if "head.weight" not in sd and cfg.get("tie_word_embeddings") and "emb.weight" in sd:
        sd["head.weight"] = sd["emb.weight"]
    return config, sd


def save_hf(model, directory):
    """Writes `model` as a directory RwkvForCausalLM.from_pretrained loads: config.json and
    model.safetensors (weights in their current dtype, on the CPU)."""
    c = model.config
    config = {
        "architectures": ["RwkvForCausalLM"],
        "model_type": "rwkv",
        "vocab_size": c.vocab_size,
        "context_length": c.ctx_len,
        "hidden_size": c.n_embd,
        "num_hidden_layers": c.n_layer,
        "attention_hidden_size": c.n_embd,
        "intermediate_size": c.dim_ffn,
        "layer_norm_epsilon": c.layer_norm_eps,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "rescale_every": 6,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    write_hf(directory, config, {_to_hf_name(k): v for k, v in model.state_dict().items()})
