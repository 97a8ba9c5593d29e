"""The RWKV-7 model on the CPU: prefill, per-token and training speed, ours vs ChatRWKV's `rwkv`
package (RWKV_V7_ON=1, strategy "cpu fp32"), same weights.

    python benchmarks/bench_model7.py                                   # L12-d768 and L24-d1024
    python benchmarks/bench_model7.py --shapes L12-d768 --json benchmarks/cpu_model7.json

Random weights at RWKV-7 World shapes (vocab 65536, head size 64), saved in RWKV-LM's x070 format
and loaded by `rwkv` (pip install rwkv), so both run the same numbers; the last prefill logits
and one decoded token's logits are compared before anything is timed. Measured side by side in
one run (medians after a warm-up; ratios are the claims):
  prefill  one call over a P-token prompt, logits of its last position only; tokens/s = P / time
           (theirs: its sequence mode, which on a CPU is a Python loop over T per layer)
  token    one single-token step continuing a state (ours: the fused step, torch.ops.wkv.rwkv7_step,
           fp32 — what generate uses on the CPU — and the Python step RWKV7.step_ on
           to_inference_layout() weights; theirs: forward([token], state))
  floor    (per token) reading every weight once: the weight bytes without the embedding (a step
           reads one row of it) over the memory bandwidth measured now (a sum over 1 GiB)
  train    tokens/s of a training step (forward, backward, AdamW) on a batch of --train-batch
           windows of --train-ctx tokens: ours (the WKV-7 kernels) against the same model with the
           WKV-7 recurrence as the pure-torch loop over T (reference.wkv7_naive, autograd through
           it: what a CPU has without a kernel; the `rwkv` package cannot train)
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

os.environ["RWKV_V7_ON"] = "1"  # ChatRWKV's rwkv package reads its switches at import
os.environ.setdefault("RWKV_JIT_ON", "1")
os.environ.setdefault("RWKV_CUDA_ON", "0")

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from rwkv_wkv import RWKV7, RWKV7Config  # noqa: E402
from rwkv_wkv.errors import ArgumentParser, UsageError, run_command  # noqa: E402
from rwkv_wkv.rwkv7 import model as model7  # noqa: E402
from rwkv_wkv.rwkv7.reference import wkv7_naive  # noqa: E402

VOCAB = 65536


def parse_shape(s):
    try:
        layers, width = s.lower().split("-")
        return int(layers.lstrip("l")), int(width.lstrip("d"))
    except ValueError as e:
        raise UsageError(f"--shapes: {s!r} is not L<layers>-d<width> (e.g. L12-d768)") from e


def make_model(n_layer, n_embd, head_size=64, vocab=VOCAB, seed=0):
    """Random weights (RWKV-LM's init zeroes several matrices: timing wants real numbers)."""
    torch.manual_seed(seed)
    model = RWKV7(RWKV7Config(vocab_size=vocab, n_layer=n_layer, n_embd=n_embd, head_size=head_size))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and not name.endswith("r_k"):
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bandwidth_gbs():
    x = torch.ones(1 << 28)
    return x.numel() * 4 / timed(lambda: x.sum(), 5) / 1e9


def load_chatrwkv(path):
    try:
        from rwkv.model import RWKV as ChatRWKV
    except ImportError:
        return None
    with contextlib.redirect_stdout(sys.stderr):  # it prints as it loads
        return ChatRWKV(model=path[: -len(".pth")], strategy="cpu fp32")


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@contextlib.contextmanager
def naive_wkv7():
    """The model's WKV-7 calls run the pure-torch loop over T instead of the kernels."""
    def naive(r, w, k, v, a, b, state=None, *, head_size=None):
        B, T, C = r.shape
        xs = [x.view(B, T, C // head_size, head_size) for x in (r, w, k, v, a, b)]
        y, s = wkv7_naive(*xs, state)
        return y.reshape(B, T, C), s

    kernel = model7.wkv7
    model7.wkv7 = naive
    try:
        yield
    finally:
        model7.wkv7 = kernel


def train_tokens_per_s(model, batch, ctx, steps):
    model = model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, model.config.vocab_size, (batch, ctx + 1), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()

    return batch * ctx / timed(step, steps)


def bench_shape(n_layer, n_embd, a, use_chatrwkv):
    rec = {"shape": f"L{n_layer}-d{n_embd}", "device": "cpu", "prefill_tokens": a.prefill}
    model = make_model(n_layer, n_embd, a.head_size, a.vocab)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "emb.weight")
    rec["params_m"] = model.num_params() / 1e6
    rec["weight_mb_per_token"] = weight_bytes / 1e6
    theirs = None
    if use_chatrwkv:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.pth")
            model.save_rwkv_lm(path)
            theirs = load_chatrwkv(path)
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, a.vocab, (1, a.prefill), generator=g)
    if a.train_steps:  # before the inference layout (training wants the usual one)
        rec["train_tokens"] = a.train_batch * a.train_ctx
        rec["ours_train_tok_s"] = train_tokens_per_s(model, a.train_batch, a.train_ctx, a.train_steps)
        with naive_wkv7():
            rec["naive_train_tok_s"] = train_tokens_per_s(model, a.train_batch, a.train_ctx, a.train_steps)
        model = make_model(n_layer, n_embd, a.head_size, a.vocab)  # the weights ChatRWKV has
    fused = model.eval().fused_step()  # (before the inference layout: it reads the rows as stored)
    model = model.to_inference_layout()
    with torch.inference_mode():
        logits, _, state = model(prompt, return_state=True, last_only=True)
        step_logits = model.step(torch.tensor([5]), state)[0][0]
        if theirs is not None:  # validate before timing: same weights, same logits
            ref, their_state = theirs.forward(prompt[0].tolist(), None)
            ref_step, _ = theirs.forward([5], [s.clone() for s in their_state])
            rec["max_rel_diff_vs_chatrwkv"] = max(rel(logits[0, -1], ref), rel(step_logits, ref_step))
            if not rec["max_rel_diff_vs_chatrwkv"] < 1e-3:
                raise SystemExit(f"ours and ChatRWKV disagree at {rec['shape']}: {rec['max_rel_diff_vs_chatrwkv']:.3g}")
        rec["ours_prefill_s"] = timed(lambda: model(prompt, return_state=True, last_only=True), a.repeats)
        tok = torch.tensor([5])
        st = state.clone()
        rec["ours_token_ms"] = timed(lambda: model.step_(tok, st), a.tokens) * 1e3
        fused_err = rel(fused.step_(torch.tensor([5]), state.clone())[0], step_logits)
        if not fused_err < 1e-4:
            raise SystemExit(f"the fused step disagrees with the Python step at {rec['shape']}: {fused_err:.3g}")
        st = state.clone()
        rec["ours_fused_token_ms"] = timed(lambda: fused.step_(tok, st), a.tokens) * 1e3
        if theirs is not None:
            rec["chatrwkv_prefill_s"] = timed(lambda: theirs.forward(prompt[0].tolist(), None), a.repeats)
            _, their_state = theirs.forward(prompt[0].tolist(), None)
            rec["chatrwkv_token_ms"] = timed(lambda: theirs.forward([5], their_state), a.tokens) * 1e3
    rec["bandwidth_gbs"] = bandwidth_gbs()
    rec["floor_token_ms"] = weight_bytes / (rec["bandwidth_gbs"] * 1e9) * 1e3
    return rec


def format_tables(records):
    lines = ["| shape | impl | prefill tok/s | per-token ms | tokens/s | ours vs ChatRWKV (prefill / token) "
             "| token / floor |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in records:
        for impl, label in (("ours_fused", "ours (fused step)"), ("ours", "ours (python step)"),
                            ("chatrwkv", "chatrwkv")):
            if f"{impl}_token_ms" not in r:
                continue
            ms = r[f"{impl}_token_ms"]
            pre = "ours" if impl.startswith("ours") else impl
            vs = "-"
            if impl.startswith("ours") and "chatrwkv_token_ms" in r:
                vs = f"{r['chatrwkv_prefill_s'] / r['ours_prefill_s']:.1f}x / {r['chatrwkv_token_ms'] / ms:.2f}x"
            lines.append(f"| {r['shape']} ({r['params_m']:.0f}M) | {label} | "
                         f"{r['prefill_tokens'] / r[f'{pre}_prefill_s']:,.0f} | {ms:.2f} | {1e3 / ms:.1f} | {vs} | "
                         f"{ms / r['floor_token_ms']:.2f} |")
        lines.append(f"| {r['shape']} | floor ({r['weight_mb_per_token']:.0f} MB at {r['bandwidth_gbs']:.1f} GB/s) "
                     f"| - | {r['floor_token_ms']:.2f} | {1e3 / r['floor_token_ms']:.1f} | - | 1.00 |")
    if any("ours_train_tok_s" in r for r in records):
        lines += ["", "| shape | training tokens/s: ours | naive loop over T | speed-up |", "|---|---:|---:|---:|"]
        for r in records:
            if "ours_train_tok_s" in r:
                lines.append(f"| {r['shape']} ({r['train_tokens']} tokens per step) | {r['ours_train_tok_s']:,.0f} | "
                             f"{r['naive_train_tok_s']:,.0f} | {r['ours_train_tok_s'] / r['naive_train_tok_s']:.1f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--shapes", default="L12-d768,L24-d1024", help="comma-separated L<layers>-d<width>")
    p.add_argument("--head-size", type=int, default=64)
    p.add_argument("--vocab", type=int, default=VOCAB)
    p.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill timing (default 512)")
    p.add_argument("--tokens", type=int, default=16, help="single-token steps timed (median)")
    p.add_argument("--repeats", type=int, default=3, help="prefill repeats (median)")
    p.add_argument("--train-batch", type=int, default=1)
    p.add_argument("--train-ctx", type=int, default=256)
    p.add_argument("--train-steps", type=int, default=2, help="training steps timed (median; 0 = no training)")
    p.add_argument("--no-chatrwkv", action="store_true", help="skip the rwkv package even if installed")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    a = p.parse_args(argv)
    for name in ("prefill", "tokens", "repeats", "train_batch", "train_ctx", "head_size", "vocab"):
        if getattr(a, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    shapes = [parse_shape(s) for s in a.shapes.split(",")]
    print(f"# RWKV-7 model benchmark: CPU, {torch.get_num_threads()} threads, fp32, torch {torch.__version__}",
          file=sys.stderr)
    records = [bench_shape(L, C, a, not a.no_chatrwkv) for L, C in tqdm(shapes, desc="bench_model7", file=sys.stderr)]
    print(format_tables(records))
    for r in records:
        if "max_rel_diff_vs_chatrwkv" in r:
            print(f"- {r['shape']}: logits (last prefill position, one decoded token), ours vs ChatRWKV: "
                  f"max |diff| / max |logit| = {r['max_rel_diff_vs_chatrwkv']:.1e} (validated before timing)")
    if not a.no_chatrwkv and not any("chatrwkv_token_ms" in r for r in records):
        print("- ChatRWKV's rwkv package is not installed (pip install rwkv): ours only")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    sys.exit(run_command(main))
