"""RWKVConfig: the shape and training options of an RWKV-4 model (what every checkpoint
format stores or implies)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RWKVConfig:
    vocab_size: int = 256
    n_layer: int = 6
    n_embd: int = 512
    ctx_len: int = 1024
    dim_ffn: int | None = None  # default 4 * n_embd
    l2wrap: bool = True  # RWKV-LM's L2Wrap: a small gradient pulling the largest logit down
    l2wrap_factor: float = 1e-4
    layer_norm_eps: float = 1e-5  # the blocks' LayerNorm epsilon (Hugging Face: layer_norm_epsilon)

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_embd", "ctx_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RWKVConfig.{name} must be a positive integer, got {value!r}")
        if self.dim_ffn is None:
            self.dim_ffn = 4 * self.n_embd
        if not isinstance(self.dim_ffn, int) or self.dim_ffn < 1:
            raise ValueError(f"RWKVConfig.dim_ffn must be a positive integer, got {self.dim_ffn!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"RWKVConfig.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
