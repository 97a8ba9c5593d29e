"""Small RWKV-7 models with random weights, shared by the RWKV-7 model tests."""

import torch

from rwkv_wkv import RWKV7, RWKV7Config

TINY = dict(vocab_size=97, n_layer=3, n_embd=128, head_size=64, dim_ffn=256, decay_lora=32, a_lora=32, v_lora=32,
            gate_lora=32)


def random_model(seed=0, dtype=torch.float32, **overrides):
    """A small RWKV-7 with random weights everywhere (RWKV-LM's init zeroes several matrices, so
    a comparison on it would test little)."""
    torch.manual_seed(seed)
    model = RWKV7(RWKV7Config(**{**TINY, **overrides}))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.endswith("r_k"):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.to(dtype).eval()


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()
