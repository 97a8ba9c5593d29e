"""The trainer's checkpoint: a directory that any number of ranks write and read in shards.

    out/ckpt/
        .metadata, __0_0.distcp, ...   the model and optimizer (torch.distributed.checkpoint:
                                       each rank writes its own shards; a sharded model is
                                       never gathered to save)
        trainer_state.pt               step, config, world size, batch, random states, log

It is written as ``ckpt.tmp/`` and swapped in (the previous one moves to ``ckpt.old/`` for the
moment of the swap), so a kill at any instant leaves a whole checkpoint: ``ckpt/``, or
``ckpt.old/`` if the kill fell between the two renames (``find`` returns whichever is whole).
One process reads the weights back without a process group (``read_weights``), which is how
``RWKV.from_checkpoint`` loads a trainer checkpoint of any world size.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import first_line

# torch.distributed.checkpoint is imported where it is used: it costs ~0.7 s, and
# ``import rwkv_wkv`` (which reaches this module through from_checkpoint) should not pay it

FORMAT = 2
STATE = "trainer_state.pt"

# one process saving and loading with torch.distributed.checkpoint is intended
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def is_checkpoint(path) -> bool:
    return os.path.isfile(os.path.join(path, STATE))


def find(path) -> Path:
    """``path`` if it holds a checkpoint, else its ``.old`` sibling if that does (a kill between
    the two renames of ``save``), else ``path`` (for the caller's error)."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    return old if not is_checkpoint(path) and is_checkpoint(old) else path


def _barrier(world):
    if world > 1:
        dist.barrier()


def save(path, model, optimizer, trainer_state: dict, rank: int, world: int):
    """Every rank writes its shards of ``model`` / ``optimizer`` into ``path``.tmp, rank 0 the
    trainer state; then rank 0 swaps it in for ``path``. A collective: every rank calls it."""
    final = Path(path)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier(world)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if rank == 0:
        torch.save({"format": FORMAT, **trainer_state}, tmp / STATE)
        # fault injection for tests/test_reliability.py: signal, then stall with the new
        # checkpoint written but not yet swapped in, so the test can SIGKILL the process there
        if marker := os.environ.get("RWKV_WKV_TEST_STALL_IN_CHECKPOINT"):
            Path(marker).touch()
            time.sleep(600)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    _barrier(world)


def read_state(path) -> dict:
    """The trainer state of the checkpoint at ``path``. FileNotFoundError if there is none,
    ValueError (one line, naming the file) if it is unreadable or not ours."""
    file = Path(path) / STATE
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint in {path} (no {STATE})")
    try:
        st = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...
        raise ValueError(f"checkpoint {file} is corrupt or truncated ({type(e).__name__}: {first_line(e)})") from e
    if not isinstance(st, dict) or st.get("format") != FORMAT or not isinstance(st.get("config"), dict):
        raise ValueError(f"{file}: not a trainer checkpoint of this version (format {FORMAT})")
    return st


def load(path, model, optimizer):
    """Loads the shards at ``path`` into ``model`` (as training calls it: FSDP, DDP or plain)
    and ``optimizer``; a collective. ValueError if the shards are unreadable."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:
        raise ValueError(f"checkpoint {path}: its shards are corrupt or truncated ({type(e).__name__}: "
                         f"{first_line(e)})") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def read_weights(path, state_dict: dict) -> dict:
    """Fills ``state_dict`` (a model's, by name) with the weights saved at ``path``, in one
    process; returns it. ValueError if they cannot be read into it."""
    import torch.distributed.checkpoint as dcp

    try:
        dcp.load({"model": state_dict}, checkpoint_id=str(path))
    except Exception as e:
        raise ValueError(f"{path}: its weights do not fit the model its config describes or are unreadable "
                         f"({type(e).__name__}: {first_line(e)})") from e
    return state_dict
