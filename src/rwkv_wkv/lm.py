"""What every generation's language model shares: the checks of token ids, the loss (cross
entropy with RWKV-LM's L2Wrap), the RNN step's in-place and functional forms, generation (the
prompt in GPT mode, then one step per token, a CUDA graph on CUDA), the CPU inference layout.

A model (rwkv4.model.RWKV, rwkv7.model.RWKV7) derives from ``LanguageModel`` and provides
``forward(idx, targets=None, state=None, return_state=False, last_only=False)``,
``init_state(batch_size, device)`` and ``_step_into(tokens, state, out)`` (one token per row from
``state`` into ``out``, which may be ``state`` itself).
"""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._transforms import forward_mode_requested
from .layers import L2Wrap
from .sampling import sample


class LanguageModel(nn.Module):
    def check_ids(self, idx):
        """idx must be (B, T) ids in [0, vocab). Checked on the CPU only: elsewhere it would
        synchronise the device every step (an id out of range on a GPU still fails, in the
        embedding)."""
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if (idx.device.type == "cpu" and not torch.compiler.is_compiling() and idx.numel()
                and (int(idx.min()) < 0 or int(idx.max()) >= self.config.vocab_size)):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got range "
                             f"[{int(idx.min())}, {int(idx.max())}]")

    def output(self, x, targets, last_only, new_states=None):
        """The end of GPT mode for the last block's output x (B, T, C): (logits, loss or None), and
        the state (the layers' new states stacked on dim 1) when ``new_states`` is given.
        ``last_only``: the last position's logits only (the head is the largest matrix)."""
        if last_only:
            if targets is not None:
                raise ValueError("last_only=True gives no loss: pass targets=None")
            x = x[:, -1:]
        logits = self.head(self.ln_out(x))
        loss = None if targets is None else self.lm_loss(logits, targets)
        if new_states is not None:
            return logits, loss, torch.stack(new_states, dim=1)
        return logits, loss

    def lm_loss(self, logits, targets):
        """Cross entropy in at least float32 (16-bit logits are upcast; a float64 model keeps
        float64), with RWKV-LM's L2Wrap while training (config.l2wrap)."""
        loss_dtype = torch.promote_types(logits.dtype, torch.float32)
        loss = F.cross_entropy(logits.to(loss_dtype).view(-1, logits.size(-1)), targets.reshape(-1))
        if self.config.l2wrap and self.training and not forward_mode_requested(logits):
            loss = L2Wrap.apply(loss, logits, self.config.l2wrap_factor)
        return loss

    def state_dtype(self):
        return torch.float64 if self.emb.weight.dtype == torch.float64 else torch.float32

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

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, temperature=1.0, top_k=None, top_p=None, seed=None,
                 cuda_graph=True, stream=None, vocab_limit=None, fused_step=None):
        """Samples continuations. prompt_ids: (B, T) or (T,) ids (T >= 1; B prompts of one
        length), or a list of B prompts of any lengths (each runs its own prefill; the states are
        then stacked and decoded together: an RNN's state does not care how long its prompt was).
        A prompt runs in GPT mode (one call, logits of its last position only), then each new token
        costs one RNN step for the whole batch, updating one state tensor in place; on CUDA that
        step is captured once as a CUDA graph and replayed (``cuda_graph=False`` to run it
        eagerly). ``stream``: called with each new (B,) tensor of ids as it is sampled.
        ``vocab_limit``: only ids below it are ever produced (a tokenizer smaller than the model's
        padded vocabulary cannot decode the rest). ``fused_step`` (CPU): a ``FusedStep`` of this model
        (``model.fused_step(weights)``), or True / a weight format ("fp32", "bf16", "fp16", "int8", "q4")
        to build one: its single call per token replaces the Python step. Returns
        (B, T + new), or for a list of prompts of different lengths a list of B 1-D tensors."""
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if vocab_limit is not None and not 1 <= vocab_limit <= self.config.vocab_size:
            raise ValueError(f"vocab_limit must be in [1, {self.config.vocab_size}], got {vocab_limit}")
        if vocab_limit == self.config.vocab_size:
            vocab_limit = None
        device = self.emb.weight.device
        ragged = (isinstance(prompt_ids, (list, tuple)) and len(prompt_ids) > 0
                  and all(isinstance(p, (list, tuple, torch.Tensor)) for p in prompt_ids)
                  and len({len(p) for p in prompt_ids}) > 1)
        prompts = [torch.as_tensor(p, device=device).view(1, -1) for p in prompt_ids] if ragged else None
        idx = None if ragged else torch.as_tensor(prompt_ids, device=device)
        squeeze = not ragged and idx.dim() == 1
        idx = idx.view(1, -1) if squeeze else idx
        if ragged and any(p.shape[1] < 1 for p in prompts) or not ragged and (idx.dim() != 2 or idx.shape[1] < 1):
            raise ValueError("the prompt must hold at least one token, as (T,) or (B, T) ids, or a list of prompts")
        gen = torch.Generator(device=device)
        gen.manual_seed(seed if seed is not None else torch.seed())
        if ragged:
            runs = [self.forward(p, state=None, return_state=True, last_only=True) for p in prompts]
            logits = torch.cat([r[0][:, -1] for r in runs])
            state = torch.cat([r[2] for r in runs])
        else:
            logits, _, state = self.forward(idx, state=None, return_state=True, last_only=True)
            logits = logits[:, -1]
        if fused_step is True or isinstance(fused_step, str):
            fused_step = self.fused_step(None if fused_step is True else fused_step)
        if fused_step:
            step = lambda tokens: fused_step.step_(tokens, state)  # noqa: E731
        elif cuda_graph and device.type == "cuda":
            step = self._graphed_step(state)
        else:
            step = None
        out = [idx] if not ragged else []
        # ids the caller's tokenizer cannot decode are never sampled
        beyond = None if vocab_limit is None else torch.arange(self.config.vocab_size, device=device) >= vocab_limit
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
        if ragged:
            return [torch.cat([p[0], row]) for p, row in zip(prompts, result)]
        return result[0] if squeeze else result

    def fused_step(self, weights=None):
        """The fused single-token step of this model for CPU generation (``rwkv_wkv.fused_step``):
        every layer in one call, the weight matrices in ``weights`` ("fp32", "bf16", "fp16",
        "int8" with per-row scales, "q4": 4-bit with a scale per 32 inputs; None: the model's dtype).
        Its ``step_(tokens, state)`` is ``model.step_``'s; ``model.generate(..., fused_step=plan)`` uses it."""
        from .fused_step import FusedStep

        return FusedStep(self, weights)

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

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def config_dict(self):
        return asdict(self.config)
