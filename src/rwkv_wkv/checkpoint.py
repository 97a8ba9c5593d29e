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

import contextlib
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import first_line

FORMAT = 2
STATE = "trainer_state.pt"



@contextlib.contextmanager
def _dcp():
    """torch.distributed.checkpoint, imported on first use (it costs ~0.7 s, and ``import
    rwkv_wkv`` reaches this module); one process saving or loading with it is intended, so its
    warning about that is silenced while it runs."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield dcp


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
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    with _dcp() as dcp:
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
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        with _dcp() as dcp:
            dcp.load(state, checkpoint_id=str(path))
    except BaseException as e:  # torch's CheckpointException is a BaseException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ValueError(f"checkpoint {path}: its shards are corrupt or truncated ({_reason(e)})") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def read_weights(path, state_dict: dict) -> dict:
    """Fills ``state_dict`` (a model's, by name) with the weights saved at ``path``, in one
    process; returns it. ValueError if they cannot be read into it."""
    try:
        with _dcp() as dcp:
            dcp.load({"model": state_dict}, checkpoint_id=str(path))
    except BaseException as e:
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ValueError(f"{path}: its weights do not fit the model its config describes, or are corrupt "
                         f"({_reason(e)})") from e
    return state_dict


def _reason(e):
    """One line for a failed load: the underlying error of a CheckpointException (its last line)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    if type(e).__name__ == "CheckpointException" and lines:
        return lines[-1][:300]
    return f"{type(e).__name__}: {first_line(e)}"
