"""What every generation's model shares: token shift, the last position a segment hands on,
initialisation that works on the meta device and on FSDP2 shards, and RWKV-LM's L2Wrap."""

from __future__ import annotations

import torch

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without distributed
    DTensor = distribute_tensor = None


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward, adds factor/(B*T) * max-logit to each position's
    largest logit, discouraging logits from drifting upwards (RWKV-LM's L2Wrap).

    Written with ``setup_context``, so torch.func's reverse-mode transforms see through it; its
    backward is made of torch ops (double backward works). It has no jvp (torch.compile cannot
    trace one): under forward-mode AD the models leave it out, which changes nothing there —
    forward, it is the identity."""

    generate_vmap_rule = True

    @staticmethod
    def forward(loss, logits, factor):
        return loss.clone()  # not the input itself (a view): FSDP2 hooks the root's outputs

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, logits, factor = inputs
        ctx.save_for_backward(logits)
        ctx.factor = factor

    @staticmethod
    def backward(ctx, grad_output):
        (logits,) = ctx.saved_tensors
        scale = ctx.factor / max(1, logits.numel() // logits.shape[-1])
        maxx, ids = torch.max(logits, dim=-1, keepdim=True)
        # times grad_output: a loss scaled by 1/N (gradient accumulation) scales this part too
        glogits = torch.zeros_like(logits).scatter(-1, ids, maxx * (scale * grad_output))
        return grad_output, glogits, None


def init_(p, fill):
    """Applies an initialisation ``fill`` (an in-place function of a full tensor) to ``p``. A
    DTensor (FSDP2) is filled in full, one parameter at a time, and each rank keeps its shard,
    so a sharded model gets the values an unsharded one would (orthogonal_ needs the whole)."""
    if DTensor is not None and isinstance(p, DTensor):
        local = p.to_local()
        full = torch.empty(p.shape, dtype=p.dtype, device=local.device)
        fill(full)
        local.copy_(distribute_tensor(full, p.device_mesh, p.placements, src_data_rank=None).to_local())
    elif p.device.type != "meta":  # meta: nothing to fill (construction without memory)
        fill(p)


def last_position(x, prev):
    """The last position of x (B, T, C), what the next segment's token shift sees; for T = 0
    (eager only) the previous one passes through (zeros if None)."""
    if not torch.compiler.is_compiling() and x.shape[1] == 0:
        return x.new_zeros((x.shape[0], x.shape[2])) if prev is None else prev.to(x.dtype)
    return x[:, -1]


def token_shift(x, prev):
    """Token shift: position t sees x_{t-1}; position 0 sees `prev` (zeros if None)."""
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    # [first, x] then drop the last: one copy, as cat([first, x[:, :-1]]), but no length-(T - 1)
    # piece, whose size checks made torch.export specialise T (non-strict: a guard T - 1 != 1)
    return torch.cat([first, x], dim=1)[:, :-1]
