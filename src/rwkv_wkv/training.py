"""The trainer's mechanics (train.py is the loop): the learning-rate schedule, torchrun set-up
and tear-down, FSDP2 wrapping, sums over ranks, evaluation in bits per byte, and the plot."""

from __future__ import annotations

import contextlib
import gc
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F


def lr_at(step, a):
    """Linear warmup to a.lr over a.warmup_steps, then exponential decay to a.lr_final at a.max_steps."""
    if step < a.warmup_steps:
        return a.lr * (step + 1) / a.warmup_steps
    progress = (step - a.warmup_steps) / max(1, a.max_steps - a.warmup_steps)
    return a.lr * (a.lr_final / a.lr) ** min(1.0, progress)


def setup_distributed(device: str):
    """(rank, world size, device): under torchrun (RANK set) a process group, nccl on CUDA (one
    GPU per local rank) and gloo on the CPU; otherwise one process on ``device``."""
    if "RANK" not in os.environ:
        return 0, 1, torch.device(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if device.startswith("cuda"):
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


def any_rank(flag: bool, device, world: int) -> bool:
    """Whether ``flag`` is true on any rank (a collective; on ``device``, as nccl needs)."""
    return all_reduce_sum([float(flag)], device, world)[0] > 0


def cleanup(world):
    if world > 1 and dist.is_initialized():
        gc.collect()  # a DDP wrapper left in a reference cycle would hold the group past its destruction
        # tear down together: a rank that destroys its group while a peer is still working can
        # die at exit in gloo's threads ("terminate called without an active exception")
        dist.barrier()
        dist.destroy_process_group()


def apply_fsdp(model, device):
    """FSDP2: each block, then the root (embedding, final LayerNorm, head). On CUDA parameters are
    gathered in bf16 and gradients reduced in float32; on CPU everything stays float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def local_bytes(model, optimizer):
    """Bytes this rank holds of parameters, gradients and optimizer state (its shards under FSDP)."""
    def size(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = sum(size(p) for p in model.parameters())
    grads = sum(size(p.grad) for p in model.parameters() if p.grad is not None)
    optim = sum(size(v) for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"params": params, "grads": grads, "optimizer": optim}


@torch.no_grad()
def evaluate(model, split, ctx_len, batch_size, device, rank, world, max_tokens=None,
             autocast=contextlib.nullcontext):
    """Bits per byte of ``split`` (or its first max_tokens + 1 tokens): summed nats over the
    UTF-8 bytes of the predicted tokens / ln 2 (for byte data: bits per character).

    Non-overlapping windows of ctx_len cover the split, the last one shorter, so the whole
    split is scored (the literature's whole-split test BPC for enwik8). The full windows go
    round-robin to the ranks in batches; every rank runs the same batches (FSDP's collectives
    need that), padded with windows that weigh nothing; the short last window is run by every
    rank and counted by rank 0."""
    model.eval()
    n = len(split) - 1 if max_tokens is None else min(len(split) - 1, max_tokens)
    starts = list(range(0, n, ctx_len))
    full = [s for s in starts if s + ctx_len <= n]
    mine = full[rank::world]
    per_rank = -(-len(full) // world)
    weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
    mine += full[:1] * (per_rank - len(mine))
    batches = [(mine[i:i + batch_size], weights[i:i + batch_size], ctx_len) for i in range(0, per_rank, batch_size)]
    if len(starts) > len(full):  # the short last window
        batches.append(([starts[-1]], [1.0 if rank == 0 else 0.0], n - starts[-1]))
    nats = nbytes = 0.0
    for chunk, w, span in batches:
        win = torch.stack([torch.from_numpy(split[s:s + span + 1].astype("int64")) for s in chunk])
        x, y = win[:, :-1].to(device), win[:, 1:].to(device)
        with autocast():
            logits, _ = model(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1), reduction="none")
        per_window = loss.view(len(chunk), -1).double().sum(1).cpu()
        nats += float((per_window * torch.tensor(w, dtype=torch.float64)).sum())
        nbytes += sum(wt * split.bytes_of(s + 1, s + 1 + span) for s, wt in zip(chunk, w))
    nats, nbytes = all_reduce_sum([nats, nbytes], device, world)
    model.train()
    return nats / max(nbytes, 1.0) / math.log(2), int(nbytes)


def plot_log(records, path, title):
    """Training loss (bits per token) and validation bits per byte against tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["tokens"], r["train_loss"] / math.log(2)) for r in records if "train_loss" in r]
    va = [(r["tokens"], r["val_bpb"]) for r in records if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if tr:
        ax.plot(*zip(*tr), label="train (batch, bits per token)", alpha=0.6)
    if va:
        ax.plot(*zip(*va), "o-", label="validation (bits per byte)")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("bits")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
