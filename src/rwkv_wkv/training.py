"""What both trainers (examples/train_enwik8.py, examples/finetune.py) share: the learning-rate
schedule and the torchrun set-up, sums over ranks, and tear-down."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def lr_at(step, a):
    """Linear warmup to a.lr over a.warmup_steps, then exponential decay to a.lr_final at a.max_steps."""
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    progress = (step - a.warmup_steps) / max(1, a.max_steps - a.warmup_steps)
    return a.lr * (a.lr_final / a.lr) ** min(1.0, progress)


def setup_distributed(a):
    """(rank, world size, device): under torchrun (RANK set) a process group, nccl on CUDA (one
    GPU per local rank) and gloo on the CPU; otherwise one process on a.device."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(a.device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if a.device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
        return rank, world, torch.device("cuda", local)
    dist.init_process_group("gloo")
    return rank, world, torch.device("cpu")


def all_reduce_sum(values, device, world):
    """The sums of `values` (floats) over all ranks, in float64."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


def cleanup(world):
    if world > 1 and dist.is_initialized():
        # tear down together: a rank that destroys its group while a peer is still working can
        # die at exit in gloo's threads ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()
