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
from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..sampling import sample
from ..tokenizer import decode_bytes, encode_bytes  # noqa: F401 (rwkv_wkv.model.encode_bytes: public)
from . import checkpoints
from .config import RWKVConfig
from .ops import forward_mode_requested, wkv_with_state
from .state import EMPTY_EXPONENT

try:
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without distributed
    DTensor = distribute_tensor = None


class L2Wrap(torch.autograd.Function):
    """Identity on the loss; in backward, adds factor/(B*T) * max-logit to each position's
    largest logit, discouraging logits from drifting upwards (RWKV-LM's L2Wrap).

    Written with ``setup_context``, so torch.func's reverse-mode transforms see through it; its
    backward is made of torch ops (double backward works). It has no jvp (torch.compile cannot
    trace one): under forward-mode AD the model leaves it out, which changes nothing there —
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


def _init_(p, fill):
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


def _last(x, prev):
    """The last position of x (B, T, C), what the next segment's token shift sees; for T = 0
    (eager only) the previous one passes through (zeros if None)."""
    if not torch.compiler.is_compiling() and x.shape[1] == 0:
        return x.new_zeros((x.shape[0], x.shape[2])) if prev is None else prev.to(x.dtype)
    return x[:, -1]


def _shift(x, prev):
    """Token shift: position t sees x_{t-1}; position 0 sees `prev` (zeros if None)."""
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    # [first, x] then drop the last: one copy, as cat([first, x[:, :-1]]), but no length-(T - 1)
    # piece, whose size checks made torch.export specialise T (non-strict: a guard T - 1 != 1)
    return torch.cat([first, x], dim=1)[:, :-1]


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
        out, new_state = self.mix(x, _shift(x, shift), wkv_state)
        return out, _last(x, shift), new_state


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
        return self.mix(x, _shift(x, shift)), _last(x, shift)


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


class RWKV(nn.Module):
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
                _init_(module.weight, nn.init.normal_)
            elif isinstance(module, nn.Linear):  # as nn.Linear.reset_parameters (no bias here)
                _init_(module.weight, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)))
            elif isinstance(module, nn.LayerNorm):
                _init_(module.weight, nn.init.ones_)
                _init_(module.bias, nn.init.zeros_)
            elif isinstance(module, (TimeMix, ChannelMix)):
                for name, value in module.initial_curves().items():
                    _init_(getattr(module, name), lambda t, value=value: t.copy_(value))
        self._init_rwkv()

    @torch.no_grad()
    def _init_rwkv(self):
        """RWKV-4 initialisation of the matrices (the time_* curves are set in the modules):
        embedding uniform +-1e-4; receptances, att.key and the output projections (att.output,
        ffn.value) zero, so every block starts as the identity on the residual stream;
        other matrices orthogonal with gain sqrt(out/in) when out > in; the head orthogonal
        with gain 0.5 * sqrt(vocab / n_embd)."""
        _init_(self.emb.weight, lambda t: nn.init.uniform_(t, -1e-4, 1e-4))
        zero = (".att.key.", ".att.receptance.", ".att.output.", ".ffn.value.", ".ffn.receptance.")
        for name, p in self.named_parameters():
            if not name.endswith(".weight") or p.dim() != 2 or name == "emb.weight":
                continue
            if any(z in "." + name for z in zero):
                _init_(p, nn.init.zeros_)
            elif name == "head.weight":
                _init_(p, lambda t: nn.init.orthogonal_(t, gain=0.5 * math.sqrt(t.shape[0] / t.shape[1])))
            else:
                _init_(p, lambda t: nn.init.orthogonal_(
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
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        # checked on CPU only: elsewhere it would synchronise the device every step (an id out of
        # range on a GPU still fails, in the embedding)
        if (idx.device.type == "cpu" and not torch.compiler.is_compiling() and idx.numel()
                and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size)):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got range "
                             f"[{int(idx.min())}, {int(idx.max())}]")
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
        if last_only:
            if targets is not None:
                raise ValueError("last_only=True gives no loss: pass targets=None")
            x = x[:, -1:]
        logits = self.head(self.ln_out(x))
        loss = None
        if targets is not None:
            # at least float32 (16-bit logits are upcast; a float64 model keeps float64)
            loss_dtype = torch.promote_types(logits.dtype, torch.float32)
            loss = F.cross_entropy(logits.to(loss_dtype).view(-1, logits.size(-1)), targets.reshape(-1))
            if self.config.l2wrap and self.training and not forward_mode_requested(logits):
                loss = L2Wrap.apply(loss, logits, self.config.l2wrap_factor)
        if return_state:
            return logits, loss, torch.stack(new_states, dim=1)
        return logits, loss

    # ---- RNN mode ----------------------------------------------------------------------------
    def state_dtype(self):
        return torch.float64 if self.emb.weight.dtype == torch.float64 else torch.float32

    def init_state(self, batch_size: int, device=None):
        """The state before any token: zero shifts, empty WKV state."""
        device = device or self.emb.weight.device
        C, L = self.config.n_embd, self.config.n_layer
        state = torch.zeros(batch_size, L, 5, C, device=device, dtype=self.state_dtype())
        state[:, :, 3] = EMPTY_EXPONENT
        return state

    @torch.no_grad()
    def to_inference_layout(self):
        """Stores every Linear weight column-major: the same shapes, values and state_dict, but
        ``x @ W.T`` then reads W.T contiguously. On CPU MKL's single-vector product is faster
        that way (measured here: the 50277 x 768 head 9.1 -> 5.5 ms; a 169M-shape step 32 -> 28
        ms), GPT-mode speed is unchanged and training still works. Returns self."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    def step(self, tokens, state):
        """One token per batch row: tokens (B,) -> (logits (B, vocab), new state). O(1) in the
        sequence length; `state` is not modified (see step_ for the in-place form)."""
        out = torch.empty_like(state)
        return self._step_into(tokens, state, out), out

    def step_(self, tokens, state):
        """As step, updating `state` in place (inference: under no_grad); returns the logits."""
        return self._step_into(tokens, state, state)

    def _step_into(self, tokens, state, out):
        x = self.emb(tokens.view(-1))
        for i, block in enumerate(self.blocks):
            x = block.step_into(x, state[:, i], out[:, i])
        return self.head(self.ln_out(x))

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 cuda_graph=True, stream=None, vocab_limit=None):
        """Samples continuations. prompt_ids: (B, T) or (T,) ids (T >= 1; B prompts of one
        length). The prompt runs in GPT mode (one call, logits of its last position only), then
        each new token costs one RNN step, updating one state tensor in place; on CUDA that step
        is captured once as a CUDA graph and replayed (``cuda_graph=False`` to run it eagerly).
        ``stream``: called with each new (B,) tensor of ids as it is sampled. ``vocab_limit``:
        only ids below it are ever produced (a tokenizer smaller than the model's padded
        vocabulary cannot decode the rest). Returns (B, T + new)."""
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if vocab_limit is not None and not 1 <= vocab_limit <= self.config.vocab_size:
            raise ValueError(f"vocab_limit must be in [1, {self.config.vocab_size}], got {vocab_limit}")
        if vocab_limit == self.config.vocab_size:
            vocab_limit = None
        idx = torch.as_tensor(prompt_ids, device=self.emb.weight.device)
        squeeze = idx.dim() == 1
        idx = idx.view(1, -1) if squeeze else idx
        if idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError("the prompt must hold at least one token, as (T,) or (B, T) ids")
        gen = torch.Generator(device=idx.device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        logits, _, state = self.forward(idx, state=None, return_state=True, last_only=True)
        logits = logits[:, -1]
        step = self._graphed_step(state) if cuda_graph and idx.device.type == "cuda" else None
        out = [idx]
        # ids the caller's tokenizer cannot decode are never sampled
        beyond = None if vocab_limit is None else torch.arange(self.config.vocab_size, device=idx.device) >= vocab_limit
        for i in range(max_new_tokens):
            logits = logits.float()
            if beyond is not None:
                logits = logits.masked_fill(beyond, float("-inf"))
            nxt = sample(logits, temperature, top_k, top_p, gen)
            out.append(nxt[:, None])
            if stream is not None:
                stream(nxt)
            if i + 1 == max_new_tokens:
                break
            logits = step(nxt) if step is not None else self.step_(nxt, state)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result

    def _graphed_step(self, state):
        """The in-place step on `state` captured as a CUDA graph: returns step(tokens) -> logits
        (a static buffer, overwritten by the next call)."""
        tokens = torch.zeros(state.shape[0], dtype=torch.long, device=state.device)
        saved = state.clone()
        side = torch.cuda.Stream(device=state.device)
        side.wait_stream(torch.cuda.current_stream(state.device))
        with torch.cuda.stream(side):  # warm up (allocator, lazy initialisation) off the main stream
            for _ in range(2):
                self.step_(tokens, state)
        torch.cuda.current_stream(state.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self.step_(tokens, state)
        state.copy_(saved)  # warm-up and capture advanced it (capture itself runs nothing)

        def step(nxt):
            tokens.copy_(nxt)
            graph.replay()
            return logits

        return step

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

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def config_dict(self):
        return asdict(self.config)

