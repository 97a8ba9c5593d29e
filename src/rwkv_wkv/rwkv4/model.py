"""RWKV-4 language model on top of the WKV op: GPT mode for training, RNN mode for generation.

Parameter names and shapes are RWKV-LM RWKV-v4's, so its checkpoints load with strict=True:

    emb.weight                          (vocab, C)
    blocks.0.ln0.{weight,bias}          (C,)        only in block 0
    blocks.{i}.ln1 / ln2.{weight,bias}  (C,)
    blocks.{i}.att.time_decay           (C,)        decay w = -exp(time_decay)
    blocks.{i}.att.time_first           (C,)        bonus u for the current token
    blocks.{i}.att.time_mix_k|v|r       (1, 1, C)   token-shift interpolation
    blocks.{i}.att.key|value|receptance|output.weight   (C, C)
    blocks.{i}.ffn.time_mix_k|r         (1, 1, C)
    blocks.{i}.ffn.key.weight           (F, C)      F = dim_ffn (4C by default)
    blocks.{i}.ffn.receptance.weight    (C, C)
    blocks.{i}.ffn.value.weight         (C, F)
    ln_out.{weight,bias}, head.weight   (vocab, C)

The recurrent state, per layer, is 5 rows of (B, C): the time-mix token shift (the previous
ln1 output), the WKV state (aa, bb, pp) and the channel-mix token shift (previous ln2 output).
It is one tensor of shape (B, n_layer, 5, C) in float32 (float64 for a float64 model).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.utils.checkpoint

from ..layers import L2Wrap, init_, last_position, token_shift  # noqa: F401 (rwkv_wkv.model.L2Wrap)
from ..lm import LanguageModel
from ..sampling import sample  # noqa: F401 (rwkv_wkv.model.sample: public)
from ..tokenizer import decode_bytes, encode_bytes  # noqa: F401 (rwkv_wkv.model.encode_bytes: public)
from . import checkpoints
from .config import RWKVConfig
from .ops import wkv_with_state
from .state import EMPTY_EXPONENT


class TimeMix(nn.Module):
    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        self.config, self.layer_id = config, layer_id
        for name, value in self.initial_curves().items():
            setattr(self, name, nn.Parameter(value))
        C = config.n_embd
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)

    def initial_curves(self):
        """RWKV-4's initial time_* parameters (deterministic: no random numbers), on the CPU."""
        C, L, layer_id = self.config.n_embd, self.config.n_layer, self.layer_id
        ratio_0_to_1 = layer_id / (L - 1) if L > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - layer_id / L
        h = torch.arange(C, dtype=torch.float32)
        x = (h / C).view(1, 1, C)
        # Bonus: log(0.3) with a small zigzag across channels (-0.5, 0, 0.5, ...).
        zigzag = torch.tensor([((i + 1) % 3 - 1) * 0.5 for i in range(C)])
        return {
            # Decay speeds from -5 (slow, long memory) to 3 (fast), sharper in deeper layers.
            "time_decay": -5 + 8 * (h / max(C - 1, 1)) ** (0.7 + 1.3 * ratio_0_to_1),
            "time_first": torch.full((C,), math.log(0.3)) + zigzag,
            "time_mix_k": x.pow(ratio_1_to_almost0),
            "time_mix_v": x.pow(ratio_1_to_almost0) + 0.3 * ratio_0_to_1,
            "time_mix_r": x.pow(0.5 * ratio_1_to_almost0),
        }

    def wkv_params(self):
        """time_decay, time_first as the op takes them: float32 (or float64) even when the model
        was cast to a 16-bit dtype (the decay's exponent needs the precision)."""
        td, tf = self.time_decay, self.time_first
        if td.dtype not in (torch.float32, torch.float64):
            td, tf = td.float(), tf.float()
        return td, tf

    def mix(self, x, xx, wkv_state=None):
        """x: (B, T, C) after ln1, xx: the same shifted by one token. Returns (out, new WKV state)."""
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xv = x * self.time_mix_v + xx * (1 - self.time_mix_v)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k, v, r = self.key(xk), self.value(xv), self.receptance(xr)
        y, new_state = wkv_with_state(*self.wkv_params(), k, v, wkv_state)
        return self.output(torch.sigmoid(r) * y.to(r.dtype)), new_state

    def forward(self, x, shift=None, wkv_state=None):
        """x: (B, T, C) after ln1. Returns (out, last x, new WKV state)."""
        out, new_state = self.mix(x, token_shift(x, shift), wkv_state)
        return out, last_position(x, shift), new_state


class ChannelMix(nn.Module):
    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        self.config, self.layer_id = config, layer_id
        for name, value in self.initial_curves().items():
            setattr(self, name, nn.Parameter(value))
        C = config.n_embd
        self.key = nn.Linear(C, config.dim_ffn, bias=False)
        self.receptance = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(config.dim_ffn, C, bias=False)

    def initial_curves(self):
        """RWKV-4's initial time_mix_k / time_mix_r (deterministic), on the CPU."""
        C = self.config.n_embd
        ratio_1_to_almost0 = 1.0 - self.layer_id / self.config.n_layer
        x = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        return {"time_mix_k": x.pow(ratio_1_to_almost0), "time_mix_r": x.pow(ratio_1_to_almost0)}

    def mix(self, x, xx):
        """x: (B, T, C) after ln2, xx: the same shifted by one token."""
        xk = x * self.time_mix_k + xx * (1 - self.time_mix_k)
        xr = x * self.time_mix_r + xx * (1 - self.time_mix_r)
        k = torch.square(torch.relu(self.key(xk)))
        return torch.sigmoid(self.receptance(xr)) * self.value(k)

    def forward(self, x, shift=None):
        return self.mix(x, token_shift(x, shift)), last_position(x, shift)


class Block(nn.Module):
    def __init__(self, config: RWKVConfig, layer_id: int):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)

    def forward(self, x, state=None):
        """state: None or (B, 5, C) for this layer. Returns (x, new layer state)."""
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        att_shift = wkv_state = ffn_shift = None
        if state is not None:
            att_shift, wkv_state, ffn_shift = state[:, 0], state[:, 1:4], state[:, 4]
        a, att_last, wkv_new = self.att(self.ln1(x), att_shift, wkv_state)
        x = x + a
        f, ffn_last = self.ffn(self.ln2(x), ffn_shift)
        x = x + f
        new_state = torch.cat(
            [att_last[:, None].to(wkv_new.dtype), wkv_new, ffn_last[:, None].to(wkv_new.dtype)], dim=1
        )
        return x, new_state

    def step_into(self, x, state, out):
        """One token (x: (B, C)) from this layer's state (B, 5, C) into `out` (B, 5, C), which
        may be `state` itself (in place, for inference). One WKV call, no concatenation."""
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        xa = self.ln1(x)[:, None]  # a length-1 segment: the same mixing code as GPT mode
        a, wkv_new = self.att.mix(xa, state[:, None, 0].to(xa.dtype), state[:, 1:4])
        out[:, 1:4].copy_(wkv_new)  # (state is read before out, which may be state, is written)
        out[:, 0].copy_(xa[:, 0])
        x = x + a[:, 0]
        xf = self.ln2(x)[:, None]
        f = self.ffn.mix(xf, state[:, None, 4].to(xf.dtype))
        out[:, 4].copy_(xf[:, 0])
        return x + f[:, 0]


class RWKV(LanguageModel):
    generation = 4

    def __init__(self, config: RWKVConfig):
        super().__init__()
        self.config = config
        # activation checkpointing per block (training): saves memory, costs one more forward
        self.grad_checkpoint = False
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd)  # eps 1e-5 always, as in RWKV-LM and transformers
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_rwkv()

    # ---- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self):
        """Initialises every parameter as ``RWKV(config)`` does, wherever the model lives.

        For a model built without memory (``with torch.device("meta"): model = RWKV(config)``,
        then ``model.to_empty(device=...)``), and for one sharded by FSDP2's ``fully_shard``
        (each rank writes only its shards). Given the same seed, the tensors equal those of a
        normal construction on the CPU: the modules' default initialisations (nn.Embedding,
        nn.Linear) are replayed in construction order, then RWKV-4's (``_init_rwkv``)."""
        on_meta = [n for n, p in self.named_parameters() if p.device.type == "meta"]
        if on_meta:
            raise RuntimeError(
                f"RWKV.reset_parameters: {len(on_meta)} parameters (e.g. {on_meta[0]}) are on the "
                "meta device (no memory); call model.to_empty(device=...) first"
            )
        for module in self.modules():
            if isinstance(module, nn.Embedding):  # as nn.Embedding.reset_parameters
                init_(module.weight, nn.init.normal_)
            elif isinstance(module, nn.Linear):  # as nn.Linear.reset_parameters (no bias here)
                init_(module.weight, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)))
            elif isinstance(module, nn.LayerNorm):
                init_(module.weight, nn.init.ones_)
                init_(module.bias, nn.init.zeros_)
            elif isinstance(module, (TimeMix, ChannelMix)):
                for name, value in module.initial_curves().items():
                    init_(getattr(module, name), lambda t, value=value: t.copy_(value))
        self._init_rwkv()

    @torch.no_grad()
    def _init_rwkv(self):
        """RWKV-4 initialisation of the matrices (the time_* curves are set in the modules):
        embedding uniform +-1e-4; receptances, att.key and the output projections (att.output,
        ffn.value) zero, so every block starts as the identity on the residual stream;
        other matrices orthogonal with gain sqrt(out/in) when out > in; the head orthogonal
        with gain 0.5 * sqrt(vocab / n_embd)."""
        init_(self.emb.weight, lambda t: nn.init.uniform_(t, -1e-4, 1e-4))
        zero = (".att.key.", ".att.receptance.", ".att.output.", ".ffn.value.", ".ffn.receptance.")
        for name, p in self.named_parameters():
            if not name.endswith(".weight") or p.dim() != 2 or name == "emb.weight":
                continue
            if any(z in "." + name for z in zero):
                init_(p, nn.init.zeros_)
            elif name == "head.weight":
                init_(p, lambda t: nn.init.orthogonal_(t, gain=0.5 * math.sqrt(t.shape[0] / t.shape[1])))
            else:
                init_(p, lambda t: nn.init.orthogonal_(
                    t, gain=math.sqrt(t.shape[0] / t.shape[1]) if t.shape[0] > t.shape[1] else 1.0))

    # ---- GPT mode ----------------------------------------------------------------------------
    def forward(self, idx, targets=None, state=None, return_state=False, last_only=False):
        """idx: (B, T) token ids. Returns (logits (B, T, vocab), loss or None), and with
        ``return_state`` also the state after the last token, (B, n_layer, 5, C).
        ``last_only``: logits of the last position only, (B, 1, vocab) — what generation needs
        after a prompt (the head is the largest matrix; no loss then).

        ``state`` continues from an earlier segment; gradients flow through it, so training
        on consecutive segments with the state carried (not detached) gives the gradients of
        the whole sequence.
        """
        self.check_ids(idx)
        x = self.emb(idx)
        new_states = []
        recompute = self.grad_checkpoint and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            block_state = None if state is None else state[:, i]
            if recompute:  # activation checkpointing: keep the block's input, recompute the rest
                x, s = torch.utils.checkpoint.checkpoint(block, x, block_state, use_reentrant=False)
            else:
                x, s = block(x, block_state)
            new_states.append(s)
        return self.output(x, targets, last_only, new_states if return_state else None)

    # ---- RNN mode ----------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None):
        """The state before any token: zero shifts, empty WKV state."""
        device = device or self.emb.weight.device
        C, L = self.config.n_embd, self.config.n_layer
        state = torch.zeros(batch_size, L, 5, C, device=device, dtype=self.state_dtype())
        state[:, :, 3] = EMPTY_EXPONENT
        return state

    def _step_into(self, tokens, state, out):
        x = self.emb(tokens.view(-1))
        for i, block in enumerate(self.blocks):
            x = block.step_into(x, state[:, i], out[:, i])
        return self.head(self.ln_out(x))

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self, learning_rate, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8,
                             time_lr_mult=1.0):
        """AdamW with weight decay on the matrices only (not time_*, LayerNorms or the
        embedding), and an optional larger learning rate for time_decay / time_first (RWKV-LM
        trains them faster). Each group has an "lr_scale" the trainer's schedule multiplies."""
        decay, no_decay, time_params = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("time_decay") or name.endswith("time_first"):
                time_params.append(p)
            elif p.dim() == 2 and name != "emb.weight":
                decay.append(p)
            else:
                no_decay.append(p)
        groups = [
            {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
            {"params": time_params, "weight_decay": 0.0, "lr_scale": time_lr_mult},
        ]
        for g in groups:
            g["lr"] = learning_rate * g["lr_scale"]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas, eps=eps)

    # ---- checkpoints (the formats: checkpoints.py) -------------------------------------------
    @staticmethod
    def config_from_state_dict(sd, ctx_len=1024) -> RWKVConfig:
        """Infers vocab_size, n_embd, n_layer and dim_ffn from an RWKV-LM v4 state dict."""
        return checkpoints.config_from_state_dict(sd, ctx_len)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", ctx_len=None):
        """Loads any supported checkpoint: a Hugging Face RWKV directory, an RWKV-LM v4 ``.pth``
        (a bare state dict), or one of our trainer's checkpoints (``ckpt/``, or an older
        ``ckpt.pt``). An unusable one raises FileNotFoundError or a one-line ValueError naming
        the file and what is wrong with it; nothing is written anywhere."""
        return checkpoints.load(cls, path, map_location, ctx_len)

    def save_hf(self, directory):
        """Writes a Hugging Face directory (config.json + model.safetensors) that transformers'
        RwkvForCausalLM.from_pretrained loads."""
        checkpoints.save_hf(self, directory)

    def save_rwkv_lm(self, path):
        """Saves the bare state dict (RWKV-LM v4 format: same keys and shapes), atomically."""
        checkpoints.save_rwkv_lm(self, path)


