"""What the checkpoint formats of every generation share: the weights of a Hugging Face
directory, fitting a state dict into a model with one-line errors, writing a state dict
atomically, and telling the generations apart by their parameter names."""

from __future__ import annotations

import json
import os
import re

import torch


def generation_of(sd) -> int | None:
    """7 for an RWKV-7 state dict (RWKV-LM names: ``att.r_k``, ``att.w0``), 4 for RWKV-4
    (``att.time_decay``), None when neither shows."""
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.endswith(".att.r_k") or k.endswith(".att.w0") for k in keys):
        return 7
    if any(k.endswith(".att.time_decay") for k in keys):
        return 4
    return None


def _refuse_other_generation(path, other, generation):
    if other is not None and other != generation:
        raise ValueError(f"{path}: an RWKV-{other} checkpoint, not RWKV-{generation}: load it with "
                         f"rwkv_wkv.from_checkpoint (any generation)")


def check_generation(sd, generation, path):
    """A one-line ValueError when the state dict ``sd`` (from ``path``) is of another generation."""
    _refuse_other_generation(path, generation_of(sd), generation)


def hf_model_type(directory):
    """The model_type of ``directory``'s config.json (None if there is none or it is unreadable)."""
    try:
        with open(os.path.join(directory, "config.json")) as f:
            cfg = json.load(f)
        return cfg.get("model_type") if isinstance(cfg, dict) else None
    except (OSError, ValueError):
        return None


def read_hf_config(directory, model_types, what):
    """``directory``'s config.json, checked: a dict whose model_type is one of ``model_types`` and
    whose vocab_size / hidden_size / num_hidden_layers are positive integers; else one ValueError
    line naming the file (``what``: the kind of config expected, for the message)."""
    path = os.path.join(directory, "config.json")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({type(e).__name__}: {e})") from e
    if not isinstance(cfg, dict) or cfg.get("model_type") not in model_types:
        got = cfg.get("model_type") if isinstance(cfg, dict) else type(cfg).__name__
        raise ValueError(f"{path}: not {what} config (model_type {got!r}, expected {model_types[0]!r})")
    for key in ("vocab_size", "hidden_size", "num_hidden_layers"):
        if key not in cfg:
            raise ValueError(f"{path}: has no {key!r}")
        if not isinstance(cfg[key], int) or isinstance(cfg[key], bool) or cfg[key] < 1:
            raise ValueError(f"{path}: {key!r} must be a positive integer, got {cfg[key]!r}")
    return cfg


def config_from_dict(config_cls, path, cfg, ctx_len, generation):
    """``config_cls(**cfg)`` (a trainer checkpoint's config, whose "generation" is 7 for RWKV-7 and
    absent for RWKV-4), ctx_len overriding; a config of another generation, or one that does not
    fit, is one ValueError line naming ``path``."""
    _refuse_other_generation(path, cfg.get("generation", 4), generation)
    cfg = dict(cfg)
    if ctx_len is not None:
        cfg["ctx_len"] = ctx_len
    try:
        return config_cls(**cfg)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its config does not describe an RWKV-{generation} model ({e})") from e


def write_hf(directory, config, tensors):
    """A Hugging Face directory: ``tensors`` (name -> tensor) as model.safetensors (written then
    renamed) and ``config`` as config.json."""
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ImportError("writing safetensors needs the safetensors package: pip install 'rwkv_wkv[hf]'") from e
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, "model.safetensors.tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def save_state_dict(sd, path):
    """The tensors of ``sd`` on the CPU, written to ``path`` atomically (a .tmp, then renamed)."""
    tmp = f"{path}.tmp"
    torch.save({k: v.detach().cpu() for k, v in sd.items()}, tmp)
    os.replace(tmp, path)


def read_hf_tensors(directory):
    """Every tensor of a save_pretrained directory, by its Hugging Face name. A missing weight
    file is FileNotFoundError, an unreadable one ValueError, each naming the file."""
    files = sorted(os.listdir(directory))
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index}: not a readable safetensors index ({type(e).__name__}: {e})") from e
    else:
        shards = [f for f in files if f.endswith(".safetensors")]
    if shards:
        try:
            from safetensors.torch import load_file
        except ImportError as e:
            raise ImportError("reading safetensors needs the safetensors package: pip install 'rwkv_wkv[hf]'") from e
        tensors = {}
        for shard in shards:
            file = os.path.join(directory, shard)
            if not os.path.isfile(file):
                raise FileNotFoundError(f"{file}: named by {os.path.basename(index)} but not there")
            try:
                tensors.update(load_file(file))
            except Exception as e:  # safetensors raises its own SafetensorError (and OSError)
                raise ValueError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        return tensors
    bins = [f for f in files if f.startswith("pytorch_model") and f.endswith(".bin")]
    if not bins:
        raise ValueError(f"{directory}: no model.safetensors or pytorch_model.bin next to config.json")
    tensors = {}
    for b in bins:
        file = os.path.join(directory, b)
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{file}: not a readable PyTorch weight file ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
        if not isinstance(loaded, dict):
            raise ValueError(f"{file}: expected a dict of tensors, got {type(loaded).__name__}")
        tensors.update(loaded)
    return tensors


def build(cls, config, sd, path):
    """The model of `config` with the weights `sd` from `path`; a mismatch is one ValueError
    naming the file and what does not fit (instead of load_state_dict's multi-line report)."""
    check_generation(sd, cls.generation, path)
    model = cls(config)
    own = model.state_dict()
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{path}: {bad[0]!r} is a {type(sd[bad[0]]).__name__}, not a tensor")
    layers = {int(k.split(".")[1]) for k in sd if re.match(r"blocks\.\d+\.", k)}
    if layers and len(layers) != config.n_layer:
        raise ValueError(f"{path}: its config says {config.n_layer} layers, but the weights hold "
                         f"{len(layers)} (blocks {min(layers)}..{max(layers)})")

    def listed(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    problems = []
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} is {tuple(sd[k].shape)} in the file but {tuple(own[k].shape)} for the config"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing:
        problems.append(f"missing {listed(missing)}")
    if unexpected:
        problems.append(f"unexpected {listed(unexpected)}")
    if shapes:
        problems.append(listed(shapes))
    if problems:
        raise ValueError(f"{path}: the weights do not fit the model its config describes "
                         f"(L{config.n_layer}-d{config.n_embd}, vocab {config.vocab_size}): "
                         + "; ".join(problems))
    model.load_state_dict(sd, strict=True)
    return model
