"""RWKV-7 ("Goose", x070) language model on the WKV-7 op: GPT mode for training, RNN mode for
generation, state tuning.

Parameter names and shapes are RWKV-LM's (RWKV-v7/rwkv_v7_demo.py, train_temp), so its x070
checkpoints load with strict=True (C = n_embd, H heads of N = head_size, F = dim_ffn, D* the
low-rank sizes):

    emb.weight                                   (vocab, C)
    blocks.0.ln0.{weight,bias}                   (C,)       only in block 0
    blocks.{i}.ln1 / ln2.{weight,bias}           (C,)
    blocks.{i}.att.x_r|x_w|x_k|x_v|x_a|x_g       (1, 1, C)  token-shift mixes: x + (x_prev - x) * x_*
    blocks.{i}.att.w0 (1, 1, C), w1 (C, Dw), w2 (Dw, C)     decay: w = -softplus(-(w0 + tanh(x w1) w2)) - 0.5
    blocks.{i}.att.a0 (1, 1, C), a1 (C, Da), a2 (Da, C)     in-context learning rate a = sigmoid(...)
    blocks.{i}.att.v0 (1, 1, C), v1 (C, Dv), v2 (Dv, C)     value residual (block 0: kept, unused)
    blocks.{i}.att.g1 (C, Dg), g2 (Dg, C)                   output gate g = sigmoid(x g1) g2
    blocks.{i}.att.k_k, k_a (1, 1, C), r_k (H, N)
    blocks.{i}.att.receptance|key|value|output.weight       (C, C)
    blocks.{i}.att.ln_x.{weight,bias}            (C,)       GroupNorm(H, eps 64e-5)
    blocks.{i}.ffn.x_k (1, 1, C), ffn.key.weight (F, C), ffn.value.weight (C, F)
    ln_out.{weight,bias}, head.weight            (vocab, C)

Block 0's v0 / v1 / v2 are in RWKV-LM's files but never used (block 0's value is v_first
itself): here they are buffers, so they load and save with the rest and take no gradient.

The recurrent state is one tensor (B, n_layer, 2 + N, C) in float32 (float64 for a float64
model): per layer, row 0 is the time mix's token shift (the previous ln1 output), row 1 the
channel mix's (previous ln2 output), and rows 2.. hold the WKV state (B, H, N, N) — S[i][j],
i the value index, as the op takes it — in its memory order (``wkv_state(state)`` is that view).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..layers import init_, last_position, token_shift
from ..lm import LanguageModel
from . import checkpoints
from .config import RWKV7Config
from .ops import wkv7

LN_X_EPS = 64e-5  # RWKV-LM's GroupNorm epsilon on the WKV output (for N = 64: 1e-5 per channel)


def wkv_state(state):
    """The WKV part of a state (..., 2 + N, C) as (..., H, N, N): a view, no copy (writing to it
    writes the state)."""
    N, C = state.shape[-2] - 2, state.shape[-1]
    return state[..., 2:, :].view(*state.shape[:-2], C // N, N, N)


def _layer_state(att_last, ffn_last, wkv):
    """One layer's state (B, 2 + N, C), in the WKV state's (math) dtype, from its three parts
    (differentiable)."""
    B, H, N, _ = wkv.shape
    return torch.cat([att_last[:, None].to(wkv.dtype), ffn_last[:, None].to(wkv.dtype), wkv.reshape(B, N, H * N)],
                     dim=1)


class TimeMix(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        self.config, self.layer_id = config, layer_id
        C, H, N = config.n_embd, config.n_head, config.head_size
        for name, shape in self.parameter_shapes().items():
            value = torch.empty(shape)
            if layer_id == 0 and name in ("v0", "v1", "v2"):
                self.register_buffer(name, value)  # in RWKV-LM's files, unused by block 0
            else:
                setattr(self, name, nn.Parameter(value))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=LN_X_EPS)
        self.H, self.N = H, N

    def parameter_shapes(self):
        c = self.config
        C = c.n_embd
        shapes = {f"x_{n}": (1, 1, C) for n in "rwkvag"}
        for prefix, rank in (("w", c.decay_lora), ("a", c.a_lora), ("v", c.v_lora)):
            shapes.update({f"{prefix}0": (1, 1, C), f"{prefix}1": (C, rank), f"{prefix}2": (rank, C)})
        shapes.update({"g1": (C, c.gate_lora), "g2": (c.gate_lora, C), "k_k": (1, 1, C), "k_a": (1, 1, C),
                       "r_k": (c.n_head, c.head_size)})
        return shapes

    def initial_curves(self):
        """RWKV-LM's deterministic initial values (x_*, w0, a0, v0, k_k, k_a, r_k), on the CPU."""
        C, L, N, i = self.config.n_embd, self.config.n_layer, self.config.head_size, self.layer_id
        ratio_0_to_1 = i / (L - 1) if L > 1 else 0.0
        ratio_1_to_almost0 = 1.0 - i / L
        n = torch.arange(C, dtype=torch.float32)
        ddd = (n / C).view(1, 1, C)
        linear = n / max(C - 1, 1) - 0.5
        zigzag = ((n % N) - (N - 1) / 2) / max((N - 1) / 2, 1e-9)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (n / max(C - 1, 1)) ** (1 + ratio_0_to_1 ** 0.3)
        curves = {f"x_{name}": 1.0 - ddd.pow(power * ratio_1_to_almost0)
                  for name, power in (("r", 0.2), ("w", 0.9), ("k", 0.7), ("v", 0.7), ("a", 0.9), ("g", 0.2))}
        curves.update({
            "w0": (www + 0.5 + zigzag * 2.5).view(1, 1, C),
            "a0": (-0.19 + zigzag * 0.3 + linear * 0.4).view(1, 1, C),
            "v0": (0.73 - linear * 0.4).view(1, 1, C),
            "k_k": (0.71 - linear * 0.1).view(1, 1, C),
            "k_a": torch.full((1, 1, C), 1.02),
            "r_k": torch.full((self.config.n_head, N), -0.04),
        })
        return curves

    def mix(self, x, xx, v_first, wkv=None):
        """x: (B, T, C) after ln1, xx: the same shifted by one token, v_first: block 0's value
        (None in block 0), wkv: (B, H, N, N) or None. Returns (out, v_first, new WKV state)."""
        B, T, C = x.shape
        H, N = self.H, self.N
        xx = xx - x
        xr, xw, xk, xv, xa, xg = (x + xx * m for m in (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        w = -F.softplus(-(self.w0 + torch.tanh(xw @ self.w1) @ self.w2)) - 0.5
        if self.layer_id == 0:
            v_first = v
        else:  # the value residual: a learned mix towards block 0's value
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        kk = F.normalize((k * self.k_k).view(B, T, H, N), dim=-1, p=2.0).view(B, T, C)
        k = k * (1 + (a - 1) * self.k_a)
        y, new_wkv = wkv7(r, w.to(r.dtype), k, v, -kk, kk * a, wkv, head_size=N)
        if B * T:  # (group_norm refuses an empty batch)
            y = self.ln_x(y.view(B * T, C)).view(B, T, C)
        y = y + ((r * k * self.r_k.view(H * N)).view(B, T, H, N).sum(-1, keepdim=True)
                 * v.view(B, T, H, N)).view(B, T, C)
        return self.output(y * g), v_first, new_wkv

    def forward(self, x, v_first, shift=None, wkv=None):
        out, v_first, new_wkv = self.mix(x, token_shift(x, shift), v_first, wkv)
        return out, v_first, last_position(x, shift), new_wkv


class ChannelMix(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        self.config, self.layer_id = config, layer_id
        C = config.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, config.dim_ffn, bias=False)
        self.value = nn.Linear(config.dim_ffn, C, bias=False)

    def initial_curves(self):
        C = self.config.n_embd
        ratio_1_to_almost0 = 1.0 - self.layer_id / self.config.n_layer
        ddd = (torch.arange(C, dtype=torch.float32) / C).view(1, 1, C)
        return {"x_k": 1.0 - ddd.pow(ratio_1_to_almost0 ** 4)}

    def mix(self, x, xx):
        k = x + (xx - x) * self.x_k
        return self.value(torch.relu(self.key(k)) ** 2)

    def forward(self, x, shift=None):
        return self.mix(x, token_shift(x, shift)), last_position(x, shift)


class Block(nn.Module):
    def __init__(self, config: RWKV7Config, layer_id: int):
        super().__init__()
        C, eps = config.n_embd, config.layer_norm_eps
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C, eps=eps)
        self.ln1 = nn.LayerNorm(C, eps=eps)
        self.ln2 = nn.LayerNorm(C, eps=eps)
        self.att = TimeMix(config, layer_id)
        self.ffn = ChannelMix(config, layer_id)

    def forward(self, x, v_first, state=None):
        """state: None or this layer's (B, 2 + N, C). Returns (x, v_first, new layer state)."""
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        att_shift = ffn_shift = wkv = None
        if state is not None:
            att_shift, ffn_shift, wkv = state[:, 0], state[:, 1], wkv_state(state)
        a, v_first, att_last, wkv_new = self.att(self.ln1(x), v_first, att_shift, wkv)
        x = x + a
        f, ffn_last = self.ffn(self.ln2(x), ffn_shift)
        return x + f, v_first, _layer_state(att_last, ffn_last, wkv_new)

    def step_into(self, x, v_first, state, out):
        """One token (x: (B, C)) from this layer's state (B, 2 + N, C) into ``out``, which may be
        ``state`` itself (in place). One WKV call. Returns (x, v_first)."""
        if hasattr(self, "ln0"):
            x = self.ln0(x)
        xa = self.ln1(x)[:, None]  # a length-1 segment: the same mixing code as GPT mode
        a, v_first, wkv_new = self.att.mix(xa, state[:, None, 0].to(xa.dtype), v_first, wkv_state(state))
        wkv_state(out).copy_(wkv_new)  # (state is read before out, which may be state, is written)
        out[:, 0].copy_(xa[:, 0])
        x = x + a[:, 0]
        xf = self.ln2(x)[:, None]
        f = self.ffn.mix(xf, state[:, None, 1].to(xf.dtype))
        out[:, 1].copy_(xf[:, 0])
        return x + f[:, 0], v_first


class RWKV7(LanguageModel):
    generation = 7

    def __init__(self, config: RWKV7Config):
        super().__init__()
        self.config = config
        self.grad_checkpoint = False  # activation checkpointing per block (training)
        self.emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_out = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init_rwkv7()

    # ---- initialisation ----------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self):
        """Initialises every parameter (and block 0's unused buffers) as ``RWKV7(config)`` does,
        wherever the model lives: after ``model.to_empty(device=...)`` of a model built on the
        meta device, or on FSDP2 shards (each rank writes its own). Given the same seed, the
        values equal a normal construction's: the modules' default initialisations are replayed
        in construction order (they draw random numbers), then RWKV-LM's."""
        on_meta = [n for n, p in [*self.named_parameters(), *self.named_buffers()] if p.device.type == "meta"]
        if on_meta:
            raise RuntimeError(f"RWKV7.reset_parameters: {len(on_meta)} tensors (e.g. {on_meta[0]}) are on the "
                               "meta device (no memory); call model.to_empty(device=...) first")
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                init_(module.weight, nn.init.normal_)
            elif isinstance(module, nn.Linear):
                init_(module.weight, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)))
        self._init_rwkv7()

    @torch.no_grad()
    def _init_rwkv7(self):
        """RWKV-LM's initialisation for training from scratch (train_temp: the modules' values,
        then generate_init_weight): embedding uniform +-1e-4; head orthogonal, gain
        0.5 sqrt(vocab / C) (0.5 when vocab <= C); att.output and ffn.value zero; att.key
        orthogonal gain 0.1; the other matrices orthogonal gain 1; the low-rank w1 a1 v1 g1 zero
        and w2 a2 v2 g2 orthogonal gain 0.1; ln_x's weight ((i + 1) / L)^0.7; LayerNorms 1 / 0;
        the deterministic curves of TimeMix / ChannelMix."""
        L = self.config.n_layer
        init_(self.emb.weight, lambda t: nn.init.uniform_(t, -1e-4, 1e-4))
        V, C = self.config.vocab_size, self.config.n_embd
        init_(self.head.weight, lambda t: nn.init.orthogonal_(t, gain=0.5 * math.sqrt(V / C) if V > C else 0.5))
        for i, block in enumerate(self.blocks):
            att, ffn = block.att, block.ffn
            for ln in [block.ln1, block.ln2, *([block.ln0] if hasattr(block, "ln0") else [])]:
                init_(ln.weight, nn.init.ones_)
                init_(ln.bias, nn.init.zeros_)
            for module in (att, ffn):
                for name, value in module.initial_curves().items():
                    init_(getattr(module, name), lambda t, value=value: t.copy_(value))
            for prefix in "wavg":
                init_(getattr(att, f"{prefix}1"), nn.init.zeros_)
                init_(getattr(att, f"{prefix}2"), lambda t: nn.init.orthogonal_(t, gain=0.1))
            init_(att.receptance.weight, nn.init.orthogonal_)
            init_(att.key.weight, lambda t: nn.init.orthogonal_(t, gain=0.1))
            init_(att.value.weight, nn.init.orthogonal_)
            init_(att.output.weight, nn.init.zeros_)
            init_(att.ln_x.weight, lambda t, i=i: t.fill_(((i + 1) / L) ** 0.7))
            init_(att.ln_x.bias, nn.init.zeros_)
            init_(ffn.key.weight, nn.init.orthogonal_)
            init_(ffn.value.weight, nn.init.zeros_)
        init_(self.ln_out.weight, nn.init.ones_)
        init_(self.ln_out.bias, nn.init.zeros_)
        if hasattr(self, "initial_state"):
            init_(self.initial_state, nn.init.zeros_)

    # ---- state tuning ------------------------------------------------------------------------
    def enable_state_tuning(self):
        """Adds ``initial_state`` (n_layer, H, N, N), zeros in the state dtype: the WKV state every
        sequence starts from when no state is given (GPT mode, evaluation, generation), and
        makes it the only trainable tensor (every other parameter gets requires_grad=False).
        The op's state gradient makes its training exact. Returns self."""
        c = self.config
        if not hasattr(self, "initial_state"):
            dtype = self.state_dtype()
            device = self.emb.weight.device
            self.initial_state = nn.Parameter(torch.zeros(c.n_layer, c.n_head, c.head_size, c.head_size,
                                                          dtype=dtype, device=device))
        for name, p in self.named_parameters():
            p.requires_grad_(name == "initial_state")
        return self

    def tuned_state(self):
        """The tuned initial WKV state (n_layer, H, N, N), or None."""
        return getattr(self, "initial_state", None)

    def save_tuned_state(self, path):
        """Writes the tuned state as a small file ({"rwkv7_state": (L, H, N, N), "shape": ...})
        that ``load_tuned_state`` and ``python -m rwkv_wkv.generate --state`` read."""
        checkpoints.save_tuned_state(self, path)

    def load_tuned_state(self, path):
        """Loads a state file written by ``save_tuned_state`` into this model (one-line
        ValueError if it does not fit). Returns self."""
        return checkpoints.load_tuned_state(self, path)

    # ---- GPT mode ----------------------------------------------------------------------------
    def _start_state(self, batch_size, device):
        """The state a sequence starts from when none is given: None (zeros), or the tuned
        initial state with zero token shifts (differentiable in it)."""
        s0 = self.tuned_state()
        if s0 is None:
            return None
        L, H, N, _ = s0.shape
        C = H * N
        shifts = torch.zeros(batch_size, L, 2, C, dtype=s0.dtype, device=device)
        wkv = s0.reshape(L, N, C)[None].expand(batch_size, L, N, C)
        return torch.cat([shifts, wkv], dim=2)

    def forward(self, idx, targets=None, state=None, return_state=False, last_only=False):
        """idx: (B, T) token ids. Returns (logits (B, T, vocab), loss or None), and with
        ``return_state`` also the state after the last token, (B, n_layer, 2 + N, C).
        ``last_only``: logits of the last position only, (B, 1, vocab) (no loss then).
        ``state`` (from ``init_state`` or an earlier segment) continues a sequence; gradients flow
        through it, so segments with the state carried give one long pass's gradients."""
        self.check_ids(idx)
        if state is None:
            state = self._start_state(idx.shape[0], idx.device)
        x = self.emb(idx)
        v_first = None
        new_states = []
        recompute = self.grad_checkpoint and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            block_state = None if state is None else state[:, i]
            if recompute:  # activation checkpointing: keep the block's input, recompute the rest
                x, v_first, s = torch.utils.checkpoint.checkpoint(block, x, v_first, block_state, use_reentrant=False)
            else:
                x, v_first, s = block(x, v_first, block_state)
            new_states.append(s)
        return self.output(x, targets, last_only, new_states if return_state else None)

    # ---- RNN mode ----------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None):
        """The state before any token: zero shifts, the zero (or tuned) WKV state."""
        device = device or self.emb.weight.device
        c = self.config
        start = self._start_state(batch_size, device)
        if start is not None:
            return start.detach().clone()
        return torch.zeros(batch_size, c.n_layer, 2 + c.head_size, c.n_embd, device=device, dtype=self.state_dtype())

    def _step_into(self, tokens, state, out):
        x = self.emb(tokens.view(-1))
        v_first = None
        for i, block in enumerate(self.blocks):
            x, v_first = block.step_into(x, v_first, state[:, i], out[:, i])
        return self.head(self.ln_out(x))

    # ---- optimisation ------------------------------------------------------------------------
    def configure_optimizers(self, learning_rate, weight_decay=0.0, betas=(0.9, 0.99), eps=1e-8, time_lr_mult=1.0):
        """AdamW as RWKV-LM's x070 trainer groups it: weight decay on the 2-D ``.weight`` matrices
        (embedding and head included), twice the learning rate for the decay's ``att.w0`` (times
        ``time_lr_mult``), the rest plain. Each group has an "lr_scale" the schedule multiplies.
        Only parameters with requires_grad (state tuning: the initial state alone)."""
        decay, plain, fast = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith("att.w0"):
                fast.append(p)
            elif p.dim() == 2 and name.endswith(".weight") and weight_decay > 0:
                decay.append(p)
            else:
                plain.append(p)
        groups = [{"params": plain, "weight_decay": 0.0, "lr_scale": 1.0},
                  {"params": fast, "weight_decay": 0.0, "lr_scale": 2.0 * time_lr_mult},
                  {"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0}]
        for g in groups:
            g["lr"] = learning_rate * g["lr_scale"]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=betas, eps=eps)

    # ---- checkpoints (the formats: checkpoints.py) -------------------------------------------
    @staticmethod
    def config_from_state_dict(sd, ctx_len=1024) -> RWKV7Config:
        """Infers the shape (vocab, C, layers, head size, F, low-rank sizes) from an RWKV-LM
        x070 state dict."""
        return checkpoints.config_from_state_dict(sd, ctx_len)

    @classmethod
    def from_checkpoint(cls, path, map_location="cpu", ctx_len=None):
        """Loads an RWKV-7 checkpoint: an RWKV-LM x070 ``.pth``, an fla-hub Hugging Face
        directory (``model_type: rwkv7``) or one of our trainer's checkpoints. An unusable one
        raises FileNotFoundError or a one-line ValueError naming the file and the problem."""
        return checkpoints.load(cls, path, map_location, ctx_len)

    def save_rwkv_lm(self, path):
        """The RWKV-LM x070 state dict (same keys and shapes; no tuned state), written atomically."""
        checkpoints.save_rwkv_lm(self, path)

    def save_hf(self, directory):
        """An fla-hub Hugging Face directory (config.json with model_type rwkv7, model.safetensors)."""
        checkpoints.save_hf(self, directory)
