"""Generation speed: prefill and per-token tokens/s, ours vs ChatRWKV's `rwkv` package, same weights.

    python benchmarks/bench_generate.py                       # CPU: L12-d768 and L24-d1024, every format
    python benchmarks/bench_generate.py --device cuda --shapes L12-d512,L12-d768 --json out.json
    python benchmarks/bench_generate.py --shapes L12-d768 --formats fp32,int8 --batch 1,4 --tokens 64

Random weights at RWKV-4 shapes (vocab 50277, the 20B tokenizer's). Ours is saved in RWKV-LM
format and loaded by `rwkv` (`pip install rwkv`; its strategy "cpu fp32" / "cuda fp32", with its
TorchScript on, RWKV_JIT_ON=1), so both run the same numbers; the last prefill logits are
compared before anything is timed. Measured side by side in one run:
  prefill  one call over a P-token prompt, logits of the last position only (what generation
           needs); tokens/s = P / time
  token    one single-token step continuing a state: on the CPU ours is the fused step
           (torch.ops.wkv.rwkv4_step) with the matrices in each --formats entry (fp32, bf16,
           fp16, int8 with per-row scales), and the Python step (RWKV.step_, weights in
           to_inference_layout()) it replaced; on CUDA the Python step replayed as a CUDA graph,
           as generate() does; ChatRWKV with "cpu fp32" and "cpu fp32i8" (its 8-bit format);
           ms and tokens/s, at each --batch size (rows decoded together; per-token ms is per step)
  floor    (per token) reading every weight once: each format's weight bytes (without the
           embedding, of which a step reads one row) over this machine's memory bandwidth,
           measured in the same run: a sum over a 1 GiB buffer timed beside every timing, the
           median of those probes per shape (their range is reported too)
Each format's logits are compared with fp32's (max |diff| / max |logit|, reported) before
timing. Medians over repeats after a warm-up. Ratios are the claims.
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
from rwkv_wkv.fused_step import FORMATS, FusedStep

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


def load_chatrwkv(path, device, fmt="fp32"):
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ.setdefault("RWKV_CUDA_ON", "0")
    try:
        from rwkv.model import RWKV as ChatRWKV
    except ImportError:
        return None
    import contextlib

    with contextlib.redirect_stdout(sys.stderr):  # it prints its whole weight table
        return ChatRWKV(model=path[: -len(".pth")], strategy=f"{device.type} {fmt}")


def rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def bench_shape(n_layer, n_embd, device, a, use_chatrwkv):
    """Records for one shape: the prefill, then per-token rows (impl, format, batch)."""
    prefill, tokens, repeats = a.prefill, a.tokens, a.repeats
    base = {"shape": f"L{n_layer}-d{n_embd}", "device": device.type, "prefill_tokens": prefill}
    model = make_model(n_layer, n_embd)
    matrix_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "emb.weight")
    base["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    theirs = {}
    if use_chatrwkv:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "model.pth")
            model.save_rwkv_lm(path)
            for fmt in ["fp32"] + (["fp32i8"] if device.type == "cpu" and a.chatrwkv_i8 else []):
                t = load_chatrwkv(path, device, fmt)
                if t is not None:
                    theirs[fmt] = t
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, VOCAB, (1, prefill), generator=g)
    # the bandwidth is probed beside every timing (this VM's varies from one second to the next), and
    # the shape's floors use the median of the probes
    probes = [bandwidth_gbs(device)]
    records = []

    def add(impl, fmt, batch, ms, weight_bytes, **extra):
        probes.append(bandwidth_gbs(device))
        records.append({"impl": impl, "format": fmt, "batch": batch, "token_ms": ms, "weight_mb": weight_bytes / 1e6,
                        **extra})

    with torch.inference_mode():
        # the fused step first: it reads the weights row-major, as the model stores them
        fused = {}
        if device.type == "cpu":
            for fmt in a.formats:
                fused[fmt] = FusedStep(model, weights=fmt)
        ids = prompt.to(device)
        model = model.to(device)
        logits, _, state = model(ids, return_state=True, last_only=True)
        base["ours_prefill_s"] = timed(lambda: model(ids, return_state=True, last_only=True), device, repeats)
        tok1 = torch.tensor([5], device=device)
        ref_logits = model.step(tok1, state)[0]
        for fmt, plan in fused.items():
            err = rel(plan.step_(tok1, state.clone()), ref_logits)
            limit = 1e-4 if fmt == "fp32" else 0.2
            if not err < limit:
                raise SystemExit(f"the fused step ({fmt}) disagrees with the Python step at {base['shape']}: {err:.3g}")
            for batch in a.batch:
                st = state.expand(batch, *state.shape[1:]).clone()  # (never the prompt's state itself)
                tok = torch.full((batch,), 5, device=device)
                ms = timed(lambda: plan.step_(tok, st), device, tokens) * 1e3
                add("ours (fused)", fmt, batch, ms, plan.weight_bytes, logit_rel_err_vs_fp32=err)
        model.to_inference_layout()
        for batch in a.batch:
            st = state.expand(batch, *state.shape[1:]).clone()  # (never the prompt's state itself)
            tok = torch.full((batch,), 5, device=device)
            step = model._graphed_step(st) if device.type == "cuda" else (lambda t: model.step_(t, st))
            ms = timed(lambda: step(tok), device, tokens) * 1e3
            add("ours (python step)", "fp32", batch, ms, matrix_bytes)
        for fmt, t in theirs.items():
            ref, their_state = t.forward(prompt[0].tolist(), None)
            err = rel(logits[0, -1].cpu(), ref.cpu())
            if fmt == "fp32" and not err < 1e-3:
                raise SystemExit(f"ours and ChatRWKV disagree at {base['shape']}: {err:.3g}")
            if fmt == "fp32":
                base["max_rel_diff_vs_chatrwkv"] = err
                base["chatrwkv_prefill_s"] = timed(lambda: t.forward(prompt[0].tolist(), None), device, repeats)
            ms = timed(lambda: t.forward([5], their_state), device, tokens) * 1e3
            nbytes = matrix_bytes if fmt == "fp32" else matrix_bytes / 4
            add("ChatRWKV", fmt, 1, ms, nbytes, logit_rel_err_vs_fp32=err)
    bandwidth = statistics.median(probes)
    base.update(bandwidth_gbs=bandwidth, bandwidth_probes_gbs=[min(probes), max(probes)])
    for r in records:
        r["floor_token_ms"] = r["weight_mb"] * 1e6 / (bandwidth * 1e9) * 1e3
    return [{**base, **r} for r in records]


def format_table(records):
    lines = ["| shape | impl | format | batch | per-token ms | tokens/s (all rows) | floor ms (its bytes) "
             "| token / floor | vs ChatRWKV fp32 |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for shape in dict.fromkeys(r["shape"] for r in records):
        rows = [r for r in records if r["shape"] == shape]
        theirs = next((r["token_ms"] for r in rows if r["impl"] == "ChatRWKV" and r["format"] == "fp32"), None)
        for r in rows:
            vs = f"{theirs / r['token_ms']:.2f}x" if theirs and r["batch"] == 1 else "-"
            lines.append(f"| {shape} ({r['params_m']:.0f}M) | {r['impl']} | {r['format']} | {r['batch']} | "
                         f"{r['token_ms']:.2f} | {r['batch'] * 1e3 / r['token_ms']:.1f} | {r['floor_token_ms']:.2f} "
                         f"({r['weight_mb']:.0f} MB) | {r['token_ms'] / r['floor_token_ms']:.2f} | {vs} |")
    lines += ["", "| shape | prefill tokens | ours prefill tok/s | ChatRWKV prefill tok/s | bandwidth GB/s "
              "(median; probes' range) |", "|---|---:|---:|---:|---:|"]
    for shape in dict.fromkeys(r["shape"] for r in records):
        r = next(r for r in records if r["shape"] == shape)
        theirs = f"{r['prefill_tokens'] / r['chatrwkv_prefill_s']:,.0f}" if "chatrwkv_prefill_s" in r else "-"
        lines.append(f"| {shape} | {r['prefill_tokens']} | {r['prefill_tokens'] / r['ours_prefill_s']:,.0f} | "
                     f"{theirs} | {r['bandwidth_gbs']:.1f} ({r['bandwidth_probes_gbs'][0]:.1f}-"
                     f"{r['bandwidth_probes_gbs'][1]:.1f}) |")
    return "\n".join(lines)


@torch.inference_mode()
def quality(path, formats, n_tokens):
    """Each format's held-out loss, token by token through the fused step (what generation reads),
    against the Python step in fp32: a trained byte-level checkpoint (the trainer's model.pth, RWKV-4
    or RWKV-7) on the first n_tokens of the built-in corpus's test split (held out from its training)."""
    from rwkv_wkv import from_checkpoint
    from rwkv_wkv.data import load_corpus

    model = from_checkpoint(path).float().eval()
    if model.config.vocab_size != 256:
        raise UsageError(f"--quality needs a byte-level checkpoint (vocabulary 256), got {model.config.vocab_size}")
    text = torch.from_numpy(load_corpus(None).test[: n_tokens + 1].astype("int64"))
    rows = []

    def nll(step):
        state = model.init_state(1)
        total = 0.0
        for t in range(n_tokens):
            logits = step(text[t:t + 1], state)
            total -= torch.log_softmax(logits[0].float(), -1)[text[t + 1]].item()
        return total / n_tokens

    base = nll(model.step_)
    rows.append({"format": "python step fp32", "nll": base})
    for fmt in formats:
        plan = FusedStep(model, weights=fmt)
        rows.append({"format": f"fused {fmt}", "nll": nll(plan.step_)})
    lines = [f"held-out loss, {path} (RWKV-{model.generation} L{model.config.n_layer}-d{model.config.n_embd}), "
             f"first {n_tokens} bytes of the built-in corpus's test split:", "",
             "| format | nats / byte | vs fp32 |", "|---|---:|---:|"]
    for r in rows:
        r["rel_vs_fp32"] = r["nll"] / base - 1
        lines.append(f"| {r['format']} | {r['nll']:.4f} | {100 * r['rel_vs_fp32']:+.2f}% |")
    print("\n".join(lines))
    return rows


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--shapes", default="L12-d768,L24-d1024",
                   help="comma-separated L<layers>-d<width> (default: the 169M and 430M shapes)")
    p.add_argument("--formats", default="fp32,bf16,fp16,int8", help="the fused step's weight formats (CPU)")
    p.add_argument("--batch", default="1,4", help="rows decoded together, comma-separated (default 1,4)")
    p.add_argument("--prefill", type=int, default=512, help="prompt length for the prefill timing (default 512)")
    p.add_argument("--tokens", type=int, default=32, help="single-token steps timed (median reported)")
    p.add_argument("--repeats", type=int, default=5, help="prefill repeats (median reported)")
    p.add_argument("--no-chatrwkv", action="store_true", help="skip the rwkv package even if installed")
    p.add_argument("--no-chatrwkv-i8", dest="chatrwkv_i8", action="store_false",
                   help="skip ChatRWKV's cpu fp32i8 (slow: ~0.5 s per token at L12-d768)")
    p.add_argument("--quality", default=None, metavar="CKPT",
                   help="instead of timing: each format's held-out loss with this trained byte-level checkpoint")
    p.add_argument("--quality-tokens", type=int, default=4000, help="held-out bytes scored by --quality")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda needs a GPU")
    args.formats = [f for f in args.formats.split(",") if f] if device.type == "cpu" else []
    bad = [f for f in args.formats if f not in FORMATS]
    if bad:
        raise UsageError(f"--formats: {bad[0]!r} is not one of {', '.join(FORMATS)}")
    try:
        args.batch = [int(b) for b in args.batch.split(",")]
    except ValueError as e:
        raise UsageError(f"--batch must be comma-separated integers, got {args.batch!r}") from e
    if any(b < 1 for b in args.batch):
        raise UsageError(f"--batch sizes must be >= 1, got {args.batch}")
    if args.quality:
        records = quality(args.quality, args.formats, args.quality_tokens)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(records, f, indent=1)
        return records
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# generation benchmark: {where}, torch {torch.__version__}", file=sys.stderr)
    records = []
    for s in tqdm(args.shapes.split(","), desc="bench_generate", file=sys.stderr):
        records += bench_shape(*parse_shape(s), device, args, not args.no_chatrwkv)
    below = [f"{r['shape']} {r['impl']} {r['format']} batch {r['batch']}: {r['token_ms']:.2f} ms < floor "
             f"{r['floor_token_ms']:.2f} ms" for r in records if r["token_ms"] < r["floor_token_ms"]]
    if below:  # reading the weights once is the least a token costs: the bandwidth probes ran under load
        raise UsageError("unmeasurable run, nothing written: a step beat the memory floor (" + "; ".join(below)
                         + "); another program was using the machine: run again when it is quiet")
    print(format_table(records))
    for r in records:
        if "logit_rel_err_vs_fp32" in r and r["batch"] == 1 and r["format"] != "fp32":
            print(f"- {r['shape']} {r['impl']} {r['format']}: logits vs fp32, max |diff| / max |logit| = "
                  f"{r['logit_rel_err_vs_fp32']:.1e}")
        if "max_rel_diff_vs_chatrwkv" in r and r["impl"] == "ours (python step)" and r["batch"] == args.batch[0]:
            print(f"- {r['shape']}: last prefill logits, ours vs ChatRWKV fp32: max |diff| / max |logit| = "
                  f"{r['max_rel_diff_vs_chatrwkv']:.1e} (validated before timing)")
    if not any(r["impl"] == "ChatRWKV" for r in records) and not args.no_chatrwkv:
        print("- ChatRWKV's rwkv package is not installed (pip install rwkv): ours only")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    return records


if __name__ == "__main__":
    sys.exit(run_command(main))
