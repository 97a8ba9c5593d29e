"""Every RWKV-7 checkpoint format, read and written, with one-line errors.

- an RWKV-LM x070 ``.pth``: the bare state dict (our names are RWKV-LM's);
- an fla-hub Hugging Face directory (flash-linear-attention's ``RWKV7ForCausalLM``:
  config.json with ``model_type: rwkv7``, model.safetensors): the same tensors under fla's names,
  the low-rank matrices transposed and the (1, 1, C) vectors flattened where fla keeps them so;
- our trainer's checkpoint directory (``ckpt/``, its config carrying ``generation: 7``);
- a tuned-state file (``save_tuned_state``): the initial WKV state of every layer.

The model class is passed in (``RWKV7.from_checkpoint`` calls ``load(cls, ...)``), so this
module never imports the model.
"""

from __future__ import annotations

import os
import re

import torch

from .. import checkpoint as trainer_checkpoint
from ..errors import first_line
from ..formats import (
    build,
    check_generation,
    config_from_dict,
    read_hf_config,
    read_hf_tensors,
    save_state_dict,
    write_hf,
)
from .config import RWKV7Config

CONFIG = "config.json"
HF_MODEL_TYPES = ("rwkv7", "rwkv7_fla")  # fla-hub's configs say "rwkv7"; some fla versions "rwkv7_fla"


# ---- RWKV-LM x070 .pth -----------------------------------------------------------------------
def config_from_state_dict(sd, ctx_len=1024) -> RWKV7Config:
    """The shape of an RWKV-LM x070 state dict: vocab and C from emb, layers from the block
    numbers, (H, N) from att.r_k, F from ffn.key, the low-rank sizes from w1 / a1 / v1 / g1."""
    def shape(key, dims):
        t = sd.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            raise ValueError(f"not an RWKV-7 state dict: it has no {dims}-D {key!r}")
        return t.shape

    vocab, C = shape("emb.weight", 2)
    layers = {int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", str(k)))}
    n_layer = max(layers) + 1 if layers else 0
    H, N = shape("blocks.0.att.r_k", 2)
    v1 = "blocks.1.att.v1" if n_layer > 1 else "blocks.0.att.v1"
    return RWKV7Config(vocab_size=vocab, n_layer=n_layer, n_embd=C, head_size=N, ctx_len=ctx_len,
                       dim_ffn=shape("blocks.0.ffn.key.weight", 2)[0], decay_lora=shape("blocks.0.att.w1", 2)[1],
                       a_lora=shape("blocks.0.att.a1", 2)[1], v_lora=shape(v1, 2)[1],
                       gate_lora=shape("blocks.0.att.g1", 2)[1])


def save_rwkv_lm(model, path):
    """RWKV-LM's x070 state dict (the tuned state, not an RWKV-LM tensor, is left out)."""
    save_state_dict({k: v for k, v in model.state_dict().items() if k != "initial_state"}, path)


# ---- fla-hub Hugging Face directories --------------------------------------------------------
_TOP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
        "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
_MODULES = {"ln0": "pre_norm", "ln1": "attn_norm", "ln2": "ffn_norm", "att": "attn", "ffn": "ffn"}
_PROJ = {"receptance": "r_proj", "key": "k_proj", "value": "v_proj", "output": "o_proj", "ln_x": "g_norm"}
_LORA = {"0": "2.bias", "1": "0.weight", "2": "2.weight"}  # w0 is the bias of the second linear
_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")  # in RWKV-LM's files, not fla's


def _to_fla(name, tensor):
    """(fla's name, its tensor) for one of ours."""
    if name in _TOP:
        return _TOP[name], tensor
    block, layer, module, rest = name.split(".", 3)
    out = f"model.layers.{layer}.{_MODULES[module]}."
    if module == "att" and re.fullmatch(r"[wavg][012]", rest):
        kind, num = rest
        if num == "0":
            tensor = tensor.reshape(-1)
        else:
            tensor = tensor.t()
        return out + f"{kind}_lora.lora.{_LORA[num]}", tensor
    head, _, tail = rest.partition(".")
    if module == "att" and head in _PROJ:
        return out + f"{_PROJ[head]}.{tail}", tensor
    if rest in ("k_k", "k_a") or (module == "ffn" and rest == "x_k"):
        tensor = tensor.reshape(-1)  # fla keeps these as (C,); the att.x_* stay (1, 1, C)
    return out + rest, tensor


def save_hf(model, directory):
    """An fla-hub directory: config.json (fla's keys, model_type rwkv7) and model.safetensors."""
    c = model.config
    config = {
        "architectures": ["RWKV7ForCausalLM"], "model_type": "rwkv7", "attn_mode": "chunk",
        "vocab_size": c.vocab_size, "hidden_size": c.n_embd, "num_hidden_layers": c.n_layer,
        "head_dim": c.head_size, "num_heads": c.n_head, "hidden_ratio": c.dim_ffn / c.n_embd,
        "intermediate_size": c.dim_ffn, "decay_low_rank_dim": c.decay_lora, "a_low_rank_dim": c.a_lora,
        "v_low_rank_dim": c.v_lora, "gate_low_rank_dim": c.gate_lora, "hidden_act": "sqrelu",
        "max_position_embeddings": c.ctx_len, "norm_first": True, "norm_bias": True, "norm_eps": c.layer_norm_eps,
        "value_dim": [c.n_embd] * c.n_layer, "tie_word_embeddings": False, "use_cache": True,
        "bos_token_id": 0, "eos_token_id": 0,
        "torch_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }
    tensors = {}
    for name, t in model.state_dict().items():
        if name == "initial_state" or name in _UNUSED:  # fla's block 0 has no value residual
            continue
        fla_name, t = _to_fla(name, t)
        tensors[fla_name] = t
    write_hf(directory, config, tensors)


def _read_config(directory):
    cfg = read_hf_config(directory, HF_MODEL_TYPES, "an fla RWKV-7")
    if cfg.get("attn"):
        raise ValueError(f"{os.path.join(directory, CONFIG)}: a hybrid model (its 'attn' puts softmax attention in "
                         "some layers); only pure RWKV-7 is supported")
    return cfg


def load_hf(cls, directory, ctx_len=None):
    """(RWKV7Config, state dict with our names) from an fla-hub RWKV-7 directory (``cls``: the
    model class, built on the meta device for its names and shapes)."""
    cfg = _read_config(directory)
    C = cfg["hidden_size"]
    tensors = read_hf_tensors(directory)
    head_size = cfg.get("head_dim") or (C // cfg["num_heads"] if cfg.get("num_heads") else 64)
    ffn = cfg.get("intermediate_size") or int(C * (cfg.get("hidden_ratio") or 4))

    L = cfg["num_hidden_layers"]

    def rank(kind, default, layer=0):  # the file's shapes decide; the config where it has none
        t = tensors.get(f"model.layers.{layer}.attn.{kind}_lora.lora.0.weight")
        return int(t.shape[0]) if t is not None else cfg.get(default)

    try:
        config = RWKV7Config(
            vocab_size=cfg["vocab_size"], n_layer=L, n_embd=C, head_size=head_size,
            ctx_len=ctx_len or cfg.get("max_position_embeddings") or 1024, dim_ffn=ffn,
            decay_lora=rank("w", "decay_low_rank_dim"), a_lora=rank("a", "a_low_rank_dim"),
            v_lora=rank("v", "v_low_rank_dim", layer=1 if L > 1 else 0),  # fla's block 0 has none
            gate_lora=rank("g", "gate_low_rank_dim"), layer_norm_eps=cfg.get("norm_eps", 1e-5))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{os.path.join(directory, CONFIG)}: {e}") from e
    ours = {}
    template = _template(cls, config)
    for name, t in template.items():
        fla_name = _to_fla(name, t)[0]
        if fla_name in tensors:
            ours[name] = _from_fla(name, tensors[fla_name], t.shape)
    if "head.weight" not in ours and cfg.get("tie_word_embeddings") and "emb.weight" in ours:
        ours["head.weight"] = ours["emb.weight"]
    known = {_to_fla(n, t)[0] for n, t in template.items()}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(f"{directory}: tensors this RWKV-7 does not have: {', '.join(unknown[:3])}"
                         + (f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""))
    for k in _UNUSED:  # block 0's value residual, unused: not in fla's files
        ours.setdefault(k, template[k])
    return config, ours


def _template(cls, config):
    """Our names with tensors of our shapes (on the meta device: no memory), except block 0's
    unused v0 / v1 / v2, which fla's files lack: RWKV-LM's v0 curve and zero matrices."""
    with torch.device("meta"):
        out = dict(cls(config).state_dict())
    C = config.n_embd
    linear = torch.arange(C, dtype=torch.float32) / max(C - 1, 1) - 0.5
    out["blocks.0.att.v0"] = (0.73 - linear * 0.4).view(1, 1, C)
    out["blocks.0.att.v1"] = torch.zeros(C, config.v_lora)
    out["blocks.0.att.v2"] = torch.zeros(config.v_lora, C)
    return out


def _from_fla(name, t, shape):
    """fla's tensor for our ``name`` back in our shape (the low-rank matrices transposed)."""
    if re.search(r"\.att\.[wavg][12]$", name):
        t = t.t()
    return t.reshape(shape) if t.numel() == torch.Size(shape).numel() else t


# ---- loading any of them -----------------------------------------------------------------------
def _config(path, cfg, ctx_len):
    return config_from_dict(RWKV7Config, path, cfg, ctx_len, 7)


def load(cls, path, map_location="cpu", ctx_len=None):
    """The model ``cls(config)`` with the weights of the RWKV-7 checkpoint at ``path``."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        if trainer_checkpoint.is_checkpoint(path):
            st = trainer_checkpoint.read_state(path)
            model = cls(_config(path, st["config"], ctx_len))
            if (st.get("args") or {}).get("state_tune"):  # a state-tuning run saved the state too
                model.enable_state_tuning()
            model.load_state_dict(trainer_checkpoint.read_weights(path, model.state_dict()), strict=True)
            return model.to(map_location)
        if not os.path.isfile(os.path.join(path, CONFIG)):
            raise ValueError(f"{path}: a directory, but not a Hugging Face RWKV-7 checkpoint (no {CONFIG} in it) "
                             f"nor a trainer checkpoint (no {trainer_checkpoint.STATE})")
        config, sd = load_hf(cls, path, ctx_len)
        return build(cls, config, sd, path).to(map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    check_generation(obj, 7, path)
    try:
        config = config_from_state_dict(obj, ctx_len or 1024)
    except (ValueError, AttributeError, IndexError, TypeError) as e:
        raise ValueError(f"{path}: {first_line(e)}") from e
    return build(cls, config, obj, path)


# ---- the tuned state ---------------------------------------------------------------------------
STATE_KEY = "rwkv7_state"


def save_tuned_state(model, path):
    s0 = model.tuned_state()
    if s0 is None:
        raise ValueError("this model has no tuned state (model.enable_state_tuning() adds one)")
    c = model.config
    save_state_dict({STATE_KEY: s0, "shape": torch.tensor([c.n_layer, c.n_embd, c.head_size])}, path)


def load_tuned_state(model, path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"state file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable state file ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get(STATE_KEY), torch.Tensor):
        raise ValueError(f"{path}: not a tuned-state file (no {STATE_KEY!r} tensor; write one with "
                         "python -m rwkv_wkv.train --state-tune)")
    c = model.config
    want = (c.n_layer, c.n_head, c.head_size, c.head_size)
    s0 = obj[STATE_KEY]
    if tuple(s0.shape) != want:
        raise ValueError(f"{path}: a state of shape {tuple(s0.shape)}, but this model (L{c.n_layer}-d{c.n_embd}, "
                         f"head size {c.head_size}) needs {want}")
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    model.enable_state_tuning()
    for n, p in model.named_parameters():  # loading a state is not a request to train it
        p.requires_grad_(requires.get(n, False))
    with torch.no_grad():
        model.initial_state.copy_(s0.to(model.initial_state.dtype))
    return model
