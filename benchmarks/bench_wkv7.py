"""Benchmark the RWKV-7 WKV op (CPU, or CUDA with --device cuda) against the naive torch loop and the arithmetic floor,
side by side in one run.

    python benchmarks/bench_wkv7.py                  # the full set, float32
    python benchmarks/bench_wkv7.py --quick          # two shapes, fewer repeats
    python benchmarks/bench_wkv7.py --dtype bf16 --json out.json --plot out.png
    python benchmarks/bench_wkv7.py --device cuda --skip-naive   # the CUDA kernels (a GPU session)

For every (B, T, H, N) it first validates the op against the naive loop (forward and every
gradient; check, then time), then times, in the same run:
  kernel  rwkv_wkv.wkv7: forward (no grad), and forward + backward through autograd (the forward
          saves its state checkpoints; the backward recomputes each 32-step chunk from them);
  naive   rwkv_wkv.rwkv7.reference.wkv7_naive, the Python loop over T (autograd for backward);
  floor   the arithmetic floor: the multiply-adds the recurrence needs at this machine's FMA rate,
          measured now as the fastest float32 torch.mm (1024^3 and 2048^3, all threads; on CUDA
          the GPU's, where the serial kernel is latency-bound at small B*H). Per (b, t, h) a
          forward step needs 5 N^2 (S a, S (d r) and the update S d + sa b^T + v k^T: 3 N^2), a
          backward step 10 N^2 (G = H + gy r^T; G k, G b; G^T v, G^T sa, (G * S) summed, S^T gy,
          S^T gsa; H = G d + gsa a^T: 2 N^2). The kernel's backward also recomputes the forward
          within each chunk (+4 N^2): it is counted against the kernel, not added to the floor.
Times are medians over repeats after a warm-up. Ratios are the claims.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from tqdm import tqdm

import rwkv_wkv
from rwkv_wkv.errors import ArgumentParser, UsageError, run_command
from rwkv_wkv.rwkv7.reference import wkv7_naive

FULL_SHAPES = [(1, 1024, 8, 64), (8, 1024, 8, 64), (1, 4096, 32, 64), (4, 512, 16, 64)]
QUICK_SHAPES = [(1, 1024, 8, 64), (4, 512, 16, 64)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
FWD_FMAS, BWD_FMAS = 5, 10  # per (b, t, h), times N^2


def _sync():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def median_ms(fn, warmup, repeats, budget_s):
    for _ in range(warmup):
        fn()
    _sync()
    times, spent = [], 0.0
    while len(times) < repeats and (not times or spent < budget_s):
        t = time.perf_counter()
        fn()
        _sync()
        dt = time.perf_counter() - t
        times.append(dt * 1e3)
        spent += dt
    return statistics.median(times)


def make_inputs(shape, dtype, seed=0, device="cpu"):
    B, T, H, N = shape
    g = torch.Generator().manual_seed(seed)
    r, k, v = (torch.randn(B, T, H, N, generator=g) for _ in range(3))
    w = -torch.nn.functional.softplus(-torch.randn(B, T, H, N, generator=g)) - 0.5
    kk = torch.nn.functional.normalize(torch.randn(B, T, H, N, generator=g), dim=-1)
    a, b = -kk, kk * torch.rand(B, T, H, N, generator=g)
    return [x.to(device=device, dtype=dtype) for x in (r, w, k, v, a, b)]


def fwd_and_fwdbwd(op, xs):
    def fwd():
        with torch.no_grad():
            op(*xs)

    prim = [x.detach().requires_grad_() for x in xs]
    gy = torch.randn_like(prim[0])

    def fwdbwd():
        y, st = op(*prim)
        torch.autograd.grad((y * gy).sum() + st.sum(), prim)

    return fwd, fwdbwd


def fma_rate(warmup, repeats, device="cpu"):
    """float32 multiply-adds per second of torch.mm (MKL / oneDNN, all threads): the fastest of
    `repeats` 1024^3 and 2048^3 products, the machine's FMA rate as its best-tuned code reaches
    it (the fastest run, not the median: a floor must not be raised by a noisy neighbour)."""
    best = 0.0
    for n in (1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        for _ in range(warmup):
            torch.mm(a, b)
        _sync()
        for _ in range(repeats):
            t = time.perf_counter()
            torch.mm(a, b)
            _sync()
            best = max(best, n**3 / (time.perf_counter() - t))
    return best


def validate(shape, dtype, device):
    """The op against the naive loop at the benchmark's shape (float32 math both)."""
    xs = make_inputs(shape, dtype, seed=1, device=device)
    prim = [x.clone().requires_grad_() for x in xs]
    ref = [x.clone().float().requires_grad_() for x in xs]
    y, st = rwkv_wkv.wkv7(*prim)
    ye, se = wkv7_naive(*ref)
    gy = torch.randn(ye.shape, generator=torch.Generator().manual_seed(2)).to(device)
    got = torch.autograd.grad((y.float() * gy).sum() + st.sum(), prim)
    want = torch.autograd.grad((ye * gy).sum() + se.sum(), ref)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for name, p, q in zip(["y", "state", "r", "w", "k", "v", "a", "b"], [y, st, *got], [ye, se, *want]):
        err = ((p.float() - q).abs().max() / q.abs().max().clamp_min(1e-30)).item()
        if not err <= tol:
            raise SystemExit(f"validation failed at {shape}: {name} relative error {err:.3g} > {tol}")


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="dtype of the inputs (default: fp32)")
    p.add_argument("--quick", action="store_true", help="two shapes, fewer repeats")
    p.add_argument("--shapes", default=None, help="override shapes as BxTxHxN, e.g. '1x1024x8x64,4x512x16x64'")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument("--naive-budget", type=float, default=None, help="seconds of naive timing per measurement")
    p.add_argument("--skip-naive", action="store_true", help="do not time the naive loop")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--plot", default=None, help="write a bar chart (log scale) to this PNG file")
    args = p.parse_args(argv)

    dtype = DTYPES[args.dtype]
    device = args.device
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device: cpu or cuda, got {device!r}")
    if device == "cuda" and not (torch.cuda.is_available() and rwkv_wkv.build_info()["cuda"]):
        raise UsageError("--device cuda needs a GPU and a CUDA build of rwkv_wkv")
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        try:
            shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
        except ValueError:
            raise UsageError(f"--shapes: expected BxTxHxN[,BxTxHxN...], got {args.shapes!r}") from None
        if any(len(s) != 4 or min(s) < 1 for s in shapes):
            raise UsageError(f"--shapes: every shape is four positive sizes BxTxHxN, got {args.shapes!r}")
    repeats = args.repeats or (3 if args.quick else 5)
    naive_budget = args.naive_budget if args.naive_budget is not None else (3.0 if args.quick else 10.0)
    warmup = 1
    info = rwkv_wkv.build_info()
    rate = fma_rate(warmup + 1, max(repeats, 5), device)
    where = (torch.cuda.get_device_name() if device == "cuda"
             else f"CPU ({info['cpu_isa']}, {torch.get_num_threads()} threads)")
    print(f"# RWKV-7 WKV, {where}, {args.dtype}; FMA rate (torch.mm): {rate / 1e9:.1f} G/s")

    records = []
    for shape in tqdm(shapes, desc="shapes", file=sys.stderr):
        validate(shape, dtype, device)
        B, T, H, N = shape
        xs = make_inputs(shape, dtype, device=device)
        steps = B * T * H * N * N
        floor_fwd, floor_bwd = FWD_FMAS * steps / rate * 1e3, BWD_FMAS * steps / rate * 1e3
        rec = {"shape": list(shape), "device": device, "dtype": args.dtype, "cpu_isa": info["cpu_isa"],
               "threads": torch.get_num_threads(), "fma_per_s": rate}
        fwd, fwdbwd = fwd_and_fwdbwd(rwkv_wkv.wkv7, xs)
        records.append({**rec, "impl": "kernel", "fwd_ms": median_ms(fwd, warmup, repeats, 30.0),
                        "fwdbwd_ms": median_ms(fwdbwd, warmup, repeats, 30.0)})
        if not args.skip_naive:
            fwd, fwdbwd = fwd_and_fwdbwd(wkv7_naive, xs)
            records.append({**rec, "impl": "naive", "fwd_ms": median_ms(fwd, 1, repeats, naive_budget),
                            "fwdbwd_ms": median_ms(fwdbwd, 1, repeats, naive_budget)})
        records.append({**rec, "impl": "floor", "fwd_ms": floor_fwd, "fwdbwd_ms": floor_fwd + floor_bwd})

    below = [f"{tuple(k['shape'])} {label} {k[key]:.3f} ms < floor {f[key]:.3f} ms"
             for k, f in zip([r for r in records if r["impl"] == "kernel"],
                             [r for r in records if r["impl"] == "floor"])
             for key, label in (("fwd_ms", "fwd"), ("fwdbwd_ms", "fwd+bwd")) if k[key] < f[key]]
    if below:  # nothing can beat its floor: the FMA rate (or the kernel) was timed while something else ran
        raise UsageError("unmeasurable run, nothing written: the kernel beat the arithmetic floor ("
                         + "; ".join(below) + "); another program was using the machine: run again when it is quiet")
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot:
        plot(records, args.plot, f"RWKV-7 WKV, {where}, {args.dtype}")
    return 0


def format_table(records):
    by = {(tuple(r["shape"]), r["impl"]): r for r in records}
    lines = ["| (B, T, H, N) | impl | fwd ms | fwd+bwd ms | naive / kernel (fwd, fwd+bwd) "
             "| kernel / floor (fwd, fwd+bwd) |", "|---|---|---:|---:|---:|---:|"]
    for r in records:
        s = tuple(r["shape"])
        k, n, f = by.get((s, "kernel")), by.get((s, "naive")), by.get((s, "floor"))
        vs = fl = ""
        if r["impl"] == "kernel":
            if n:
                vs = f"{n['fwd_ms'] / k['fwd_ms']:.0f}x, {n['fwdbwd_ms'] / k['fwdbwd_ms']:.0f}x"
            fl = f"{k['fwd_ms'] / f['fwd_ms']:.2f}, {k['fwdbwd_ms'] / f['fwdbwd_ms']:.2f}"
        lines.append(f"| {s} | {r['impl']} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | {vs} | {fl} |")
    return "\n".join(lines)


def plot(records, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(tuple(r["shape"]) for r in records))
    impls = list(dict.fromkeys(r["impl"] for r in records))
    by = {(tuple(r["shape"]), r["impl"]): r for r in records}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    width = 0.8 / len(impls)
    for ax, key, label in zip(axes, ["fwd_ms", "fwdbwd_ms"], ["forward", "forward + backward"]):
        for i, impl in enumerate(impls):
            xs = [j + i * width for j, s in enumerate(shapes) if (s, impl) in by]
            ys = [by[(s, impl)][key] for s in shapes if (s, impl) in by]
            ax.bar(xs, ys, width, label=impl)
        ax.set_xticks([j + width * (len(impls) - 1) / 2 for j in range(len(shapes))])
        ax.set_xticklabels(["x".join(map(str, s)) for s in shapes], rotation=20)
        ax.set_yscale("log")
        ax.set_title(label)
        ax.set_xlabel("B x T x H x N")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("milliseconds (log scale, lower is better)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(run_command(main))
