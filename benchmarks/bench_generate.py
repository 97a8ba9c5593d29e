"""Generation speed: prefill and per-token tokens/s, ours vs ChatRWKV's `rwkv` package, same weights.

    python benchmarks/bench_generate.py                       # CPU fp32, the 169M shape and a smaller one
    python benchmarks/bench_generate.py --device cuda --json out.json
    python benchmarks/bench_generate.py --shapes L12-d768,L6-d512 --prefill 512 --tokens 64

Random weights at RWKV-4 shapes (vocab 50277, the 20B tokenizer's). Ours is saved in RWKV-LM
format and loaded by `rwkv` (`pip install rwkv`; its strategy "cpu fp32" / "cuda fp32", with its
TorchScript on, RWKV_JIT_ON=1), so both run the same numbers; the last prefill logits are
compared before anything is timed. Measured side by side in one run:
  prefill  one call over a P-token prompt, logits of the last position only (what generation
           needs); tokens/s = P / time
  token    one single-token step continuing a state (ours: RWKV.step_ in place, weights in
           to_inference_layout(), and on CUDA the step replayed as a CUDA graph, as generate()
           does); ms and tokens/s
  floor    (per token) reading every weight once: the model's weight bytes (without the
           embedding, of which a step reads one row) over this machine's memory bandwidth,
           measured now as the time of a sum over a 1 GiB buffer
Medians over repeats after a warm-up. Ratios are the claims.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import torch
from tqdm import tqdm

from rwkv_wkv import RWKV, RWKVConfig
from rwkv_wkv.errors import ArgumentParser, UsageError, run_command

VOCAB = 50277


def parse_shape(s):
    layers, width = s.lower().split("-")
    return int(layers.lstrip("l")), int(width.lstrip("d"))


def make_model(n_layer, n_embd, seed=0):
    torch.manual_seed(seed)
    model = RWKV(RWKVConfig(vocab_size=VOCAB, n_layer=n_layer, n_embd=n_embd, ctx_len=1024))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # the RWKV init zeroes several matrices; timing wants real numbers
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return model.eval()


def timed(fn, device, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bandwidth_gbs(device):
    """Read bandwidth: a sum over a 1 GiB float32 buffer."""
    x = torch.ones(1 << 28, device=device)
    t = timed(lambda: x.sum(), device, 5)
    return x.numel() * 4 / t / 1e9


def load_chatrwkv(path, device):
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    try:
        from rwkv.model import RWKV as ChatRWKV
    except ImportError:
        return None
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # it prints its whole weight table
        return ChatRWKV(model=path[: -len(".pth")], strategy=f"{device.type} fp32")


def bench_shape(n_layer, n_embd, device, prefill, tokens, repeats, use_chatrwkv):
    rec = {"shape": f"L{n_layer}-d{n_embd}", "device": device.type, "prefill_tokens": prefill}
    model = make_model(n_layer, n_embd)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "emb.weight")
    rec["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    rec["weight_mb_per_token"] = weight_bytes / 1e6
    theirs = None
    if use_chatrwkv:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.pth")
            model.save_rwkv_lm(path)
            theirs = load_chatrwkv(path, device)
    model = model.to(device).to_inference_layout()
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, VOCAB, (1, prefill), generator=g)
    ids = prompt.to(device)
    with torch.inference_mode():
        logits, _, state = model(ids, return_state=True, last_only=True)
        if theirs is not None:  # validate before timing: same weights, same logits
            ref, _ = theirs.forward(prompt[0].tolist(), None)
            rec["max_rel_diff_vs_chatrwkv"] = ((logits[0, -1].float().cpu() - ref.float().cpu()).abs().max()
                                              / ref.float().abs().max()).item()
            if not rec["max_rel_diff_vs_chatrwkv"] < 1e-3:
                raise SystemExit(f"ours and ChatRWKV disagree at {rec['shape']}: {rec['max_rel_diff_vs_chatrwkv']:.3g}")
        rec["ours_prefill_s"] = timed(lambda: model(ids, return_state=True, last_only=True), device, repeats)
        tok = torch.tensor([5], device=device)
        st = state.clone()
        step = model._graphed_step(st) if device.type == "cuda" else (lambda t: model.step_(t, st))
        rec["ours_token_ms"] = timed(lambda: step(tok), device, tokens) * 1e3
        if theirs is not None:
            rec["chatrwkv_prefill_s"] = timed(lambda: theirs.forward(prompt[0].tolist(), None), device, repeats)
            _, their_state = theirs.forward(prompt[0].tolist(), None)
            rec["chatrwkv_token_ms"] = timed(lambda: theirs.forward([5], their_state), device, tokens) * 1e3
    rec["bandwidth_gbs"] = bandwidth_gbs(device)
    rec["floor_token_ms"] = weight_bytes / (rec["bandwidth_gbs"] * 1e9) * 1e3
    return rec


def format_table(records):
    lines = [
        "| shape | device | impl | prefill tok/s | per-token ms | tokens/s | vs ChatRWKV (prefill / token) "
        "| token / floor |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        for impl in ("ours", "chatrwkv"):
            if f"{impl}_token_ms" not in r:
                continue
            pre = r["prefill_tokens"] / r[f"{impl}_prefill_s"]
            ms = r[f"{impl}_token_ms"]
            vs = "-"
            if impl == "ours" and "chatrwkv_token_ms" in r:
                vs = f"{r['chatrwkv_prefill_s'] / r['ours_prefill_s']:.2f}x / {r['chatrwkv_token_ms'] / ms:.2f}x"
            lines.append(f"| {r['shape']} ({r['params_m']:.0f}M) | {r['device']} | {impl} | {pre:,.0f} | {ms:.2f} | "
                         f"{1e3 / ms:.1f} | {vs} | {ms / r['floor_token_ms']:.2f} |")
        lines.append(
            f"| {r['shape']} | {r['device']} | floor ({r['weight_mb_per_token']:.0f} MB at "
            f"{r['bandwidth_gbs']:.1f} GB/s) | - | {r['floor_token_ms']:.2f} | "
            f"{1e3 / r['floor_token_ms']:.1f} | - | 1.00 |"
        )
    return "\n".join(lines)


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument(
        "--shapes",
        default="L12-d768,L6-d512",
        help="comma-separated L<layers>-d<width> (default: the 169M shape and L6-d512)",
    )
    p.add_argument("--prefill", type=int, default=512, help="prompt length for the prefill timing (default 512)")
    p.add_argument("--tokens", type=int, default=32, help="single-token steps timed (median reported)")
    p.add_argument("--repeats", type=int, default=5, help="prefill repeats (median reported)")
    p.add_argument("--no-chatrwkv", action="store_true", help="skip the rwkv package even if installed")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda needs a GPU")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# generation benchmark: {where}, fp32, torch {torch.__version__}", file=sys.stderr)
    records = []
    for s in tqdm(args.shapes.split(","), desc="bench_generate", file=sys.stderr):
        records.append(
            bench_shape(*parse_shape(s), device, args.prefill, args.tokens, args.repeats, not args.no_chatrwkv)
        )
    print(format_table(records))
    for r in records:
        if "max_rel_diff_vs_chatrwkv" in r:
            print(f"- {r['shape']}: last prefill logits, ours vs ChatRWKV: max |diff| / max |logit| = "
                  f"{r['max_rel_diff_vs_chatrwkv']:.1e} (validated before timing)")
    if not any("chatrwkv_token_ms" in r for r in records) and not args.no_chatrwkv:
        print("- ChatRWKV's rwkv package is not installed (pip install rwkv): ours only")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    sys.exit(run_command(main))
