"""RWKV7Config: the shape and training options of an RWKV-7 ("Goose", x070) model — what
every RWKV-7 checkpoint format stores or implies."""

from __future__ import annotations

from dataclasses import dataclass


def suggested_lora_dim(n_embd: int, factor: float) -> int:
    """RWKV-LM's suggestion for a low-rank size: factor * sqrt(C), rounded to a multiple of 32,
    at least 32 (C = 768: decay and a 64, value 32, gate 128)."""
    return max(32, int(round(factor * n_embd ** 0.5 / 32) * 32))


@dataclass
class RWKV7Config:
    vocab_size: int = 256
    n_layer: int = 6
    n_embd: int = 512
    head_size: int = 64  # N; H = n_embd / head_size heads, each with an N x N state
    ctx_len: int = 1024
    dim_ffn: int | None = None  # default 4 * n_embd (RWKV-LM's x070 models)
    decay_lora: int | None = None  # w1 / w2 (default: RWKV-LM's suggestion, 2.5 sqrt(C))
    a_lora: int | None = None  # a1 / a2 (2.5 sqrt(C))
    v_lora: int | None = None  # v1 / v2, the value residual (1.7 sqrt(C))
    gate_lora: int | None = None  # g1 / g2 (5 sqrt(C))
    l2wrap: bool = True  # RWKV-LM's L2Wrap: a small gradient pulling the largest logit down
    l2wrap_factor: float = 1e-4
    layer_norm_eps: float = 1e-5  # ln0 / ln1 / ln2 / ln_out (ln_x, the GroupNorm, uses 64e-5 as RWKV-LM)
    generation: int = 7  # read by the trainer's checkpoints and the generic loader

    def __post_init__(self):
        for name in ("vocab_size", "n_layer", "n_embd", "head_size", "ctx_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RWKV7Config.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.head_size:
            raise ValueError(f"RWKV7Config.n_embd ({self.n_embd}) must be a multiple of head_size ({self.head_size})")
        if self.generation != 7:
            raise ValueError(f"RWKV7Config.generation is 7, got {self.generation!r}")
        defaults = {"dim_ffn": 4 * self.n_embd, "decay_lora": suggested_lora_dim(self.n_embd, 2.5),
                    "a_lora": suggested_lora_dim(self.n_embd, 2.5), "v_lora": suggested_lora_dim(self.n_embd, 1.7),
                    "gate_lora": suggested_lora_dim(self.n_embd, 5.0)}
        for name, default in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, default)
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"RWKV7Config.{name} must be a positive integer, got {value!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"RWKV7Config.layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    @property
    def n_head(self) -> int:
        return self.n_embd // self.head_size
