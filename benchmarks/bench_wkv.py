"""Benchmark the WKV op against the naive Python loop and the hardware floor, side by side.

    python benchmarks/bench_wkv.py                   # full set, CPU, float32
    python benchmarks/bench_wkv.py --quick           # reduced set, under a minute
    python benchmarks/bench_wkv.py --device cuda --dtype bf16 --json out.json --plot out.png

For every shape it first validates the kernel against the naive loop (llm.c style: check, then
time), then times, in the same run:
  kernel  rwkv_wkv.wkv: forward, and forward+backward through autograd;
  naive   rwkv_wkv.reference.wkv_naive, the Python loop over T (autograd for backward);
  floor   what no implementation can beat on this machine, measured the same way now: the
          larger of the memory floor (plain tensor ops moving the bytes the op must move:
          forward reads k, v and writes y; backward reads k, v, y, gy and writes gk, gv) and
          the exp floor (torch.exp over as many elements as the math needs exponentials,
          from a cache-resident buffer so that only the arithmetic is timed: forward 2 per
          element — one of each max-branch pair is exp(0) — and backward 2 per element: the
          bonus weight e^{u+k_t}/D_t and the decay factor of each step, the least any backward
          needs even if the forward had stored every state).
Times are medians over repeats after a warm-up; CUDA is timed with events. Ratios are the claims.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import torch
from tqdm import tqdm

import rwkv_wkv
from rwkv_wkv.reference import wkv_naive

FULL_SHAPES = [(1, 1024, 512), (8, 1024, 512), (4, 4096, 1024), (32, 256, 768), (1, 16384, 512)]
QUICK_SHAPES = [(1, 1024, 512), (8, 1024, 512)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Timer:
    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, warmup, repeats, budget_s):
        """Median milliseconds of fn() over up to `repeats` runs, stopping once `budget_s` is spent."""
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        spent = 0.0
        while len(times) < repeats and (not times or spent < budget_s):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t) * 1e3
            times.append(ms)
            spent += ms / 1e3
        return statistics.median(times), len(times)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def make_inputs(shape, device, dtype, seed=0):
    B, T, C = shape
    g = torch.Generator().manual_seed(seed)
    td = (torch.linspace(-5, 1.5, C) + 0.3 * torch.randn(C, generator=g)).to(device)
    tf = (0.5 + 0.5 * torch.randn(C, generator=g)).to(device)
    k = (2 * torch.randn(B, T, C, generator=g)).to(device, dtype)
    v = torch.randn(B, T, C, generator=g).to(device, dtype)
    gy = torch.randn(B, T, C, generator=g).to(device, dtype)
    return td, tf, k, v, gy


def fwd_and_fwdbwd(op, td, tf, k, v, gy):
    """(forward-only callable, forward+backward callable) for op(td, tf, k, v)."""
    leaves = [x.detach().clone().requires_grad_() for x in (td, tf, k, v)]

    def fwd():
        with torch.no_grad():
            op(td, tf, k, v)

    def fwdbwd():
        for x in leaves:
            x.grad = None
        op(*leaves).backward(gy)

    return fwd, fwdbwd


def floor_ms(timer, shape, device, dtype, warmup, repeats):
    """Memory and exp floors (ms) for the forward and the forward+backward."""
    B, T, C = shape
    n = B * T * C
    k, v, y, gy = (torch.randn(n, device=device).to(dtype) for _ in range(4))
    # Outputs are allocated per call, as the op (through autograd) must allocate y, gk and gv:
    # fresh memory has a cost (page faults) that no such implementation avoids.
    mem_fwd, _ = timer(lambda: torch.add(k, v), warmup, repeats, 5)
    mem_bwd, _ = timer(lambda: (torch.add(k, v), torch.add(y, gy)), warmup, repeats, 5)
    # exp throughput from a buffer that stays in cache (L2 on CPU), repeated to cover `count`
    chunk = min(1 << 16, n) if device.type == "cpu" else min(1 << 24, 2 * n)
    src = torch.rand(chunk, device=device) * -10  # arguments <= 0, as in the kernel
    dst = torch.empty_like(src)

    def exps(count):
        calls = max(1, math.ceil(count / chunk))
        return lambda: [torch.exp(src, out=dst) for _ in range(calls)]

    exp_fwd, _ = timer(exps(2 * n), warmup, repeats, 5)
    exp_fwdbwd, _ = timer(exps(4 * n), warmup, repeats, 5)
    return {
        "mem_fwd_ms": mem_fwd,
        "mem_fwdbwd_ms": mem_fwd + mem_bwd,
        "exp_fwd_ms": exp_fwd,
        "exp_fwdbwd_ms": exp_fwdbwd,
        "fwd_ms": max(mem_fwd, exp_fwd),
        "fwdbwd_ms": max(mem_fwd + mem_bwd, exp_fwdbwd),
    }


def validate(shape, device, dtype):
    """Kernel vs naive loop (forward and gradients) before anything is timed."""
    B, T, C = shape
    Tv = min(T, 256)  # the naive loop's autograd is slow; a prefix validates the same code path
    td, tf, k, v, gy = make_inputs((B, Tv, C), device, dtype, seed=1)
    a = [x.detach().clone().requires_grad_() for x in (td, tf, k, v)]
    b = [x.detach().clone().requires_grad_() for x in (td, tf, k, v)]
    ya = rwkv_wkv.wkv(*a)
    yb = wkv_naive(*b)
    ya.float().backward(gy.float())
    yb.float().backward(gy.float())
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    errs = {"y": (ya.float() - yb.float()).abs().max().item()}
    for name, x, z in zip(["time_decay", "time_first", "k", "v"], a, b):
        errs[name] = ((x.grad.float() - z.grad.float()).abs().max() / z.grad.float().abs().max().clamp_min(1e-30)).item()
    bad = {kk: vv for kk, vv in errs.items() if not vv <= tol * (1 if kk != "y" else 3)}
    if bad:
        raise SystemExit(f"validation failed at {shape} {dtype}: {bad}")
    return errs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="dtype of k, v, y (default: fp32)")
    p.add_argument("--quick", action="store_true", help="reduced shape set and repeats (under a minute on CPU)")
    p.add_argument("--shapes", default=None, help="override shapes, e.g. '1x1024x512,8x1024x512'")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument("--naive-budget", type=float, default=None, help="seconds of naive-loop timing per measurement before stopping repeats")
    p.add_argument("--skip-naive", action="store_true", help="do not time the naive loop")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--plot", default=None, help="write a bar chart (log scale) to this PNG file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and rwkv_wkv.build_info()["cuda"]):
        raise SystemExit("--device cuda needs a GPU and a CUDA build of rwkv_wkv")
    dtype = DTYPES[args.dtype]
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    repeats = args.repeats or (5 if args.quick else 10)
    naive_budget = args.naive_budget if args.naive_budget is not None else (4.0 if args.quick else 15.0)
    warmup = 2
    timer = Timer(device)

    info = rwkv_wkv.build_info()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads, kernel isa {info['cpu_isa']})"
    print(f"# WKV benchmark: {where}, {args.dtype}, torch {torch.__version__}", file=sys.stderr)

    records, notes = [], []
    impls = ["kernel", "floor"] + ([] if args.skip_naive else ["naive"])
    bar = tqdm(total=len(shapes) * (len(impls) + 1), desc="bench", file=sys.stderr)
    for shape in shapes:
        bar.set_postfix_str(f"{shape} validate")
        validate(shape, device, dtype)
        bar.update()
        td, tf, k, v, gy = make_inputs(shape, device, dtype)
        for impl in impls:
            bar.set_postfix_str(f"{shape} {impl}")
            rec = {"shape": list(shape), "device": device.type, "dtype": args.dtype, "impl": impl}
            if impl == "floor":
                rec.update(floor_ms(timer, shape, device, dtype, warmup, repeats))
            else:
                op = rwkv_wkv.wkv if impl == "kernel" else wkv_naive
                fwd, fwdbwd = fwd_and_fwdbwd(op, td, tf, k, v, gy)
                w = warmup if impl == "kernel" else 1
                budget = 30.0 if impl == "kernel" else naive_budget
                rec["fwd_ms"], n1 = timer(fwd, w, repeats, budget)
                rec["fwdbwd_ms"], n2 = timer(fwdbwd, w, repeats, budget)
                if impl == "naive" and min(n1, n2) < repeats:
                    notes.append(f"naive at {shape}: median of {n1} (fwd) / {n2} (fwd+bwd) runs, capped at ~{naive_budget:.0f}s each")
            records.append(rec)
            bar.update()
    bar.close()

    print(format_table(records))
    for n in notes:
        print(f"- {n}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if args.plot:
        plot(records, args.plot, title=f"WKV {args.dtype} on {where}")
    return records


def format_table(records):
    by = {(tuple(r["shape"]), r["impl"]): r for r in records}
    lines = [
        "| shape (B, T, C) | impl | fwd ms | fwd+bwd ms | speedup vs naive (fwd / fwd+bwd) | ratio to floor (fwd / fwd+bwd) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        shape = tuple(r["shape"])
        naive, floor = by.get((shape, "naive")), by.get((shape, "floor"))
        sp = f"{naive['fwd_ms'] / r['fwd_ms']:.0f}x / {naive['fwdbwd_ms'] / r['fwdbwd_ms']:.0f}x" if naive else "-"
        fl = f"{r['fwd_ms'] / floor['fwd_ms']:.2f} / {r['fwdbwd_ms'] / floor['fwdbwd_ms']:.2f}" if floor else "-"
        if r["impl"] == "floor":
            kind_f = "mem" if r["mem_fwd_ms"] >= r["exp_fwd_ms"] else "exp"
            kind_b = "mem" if r["mem_fwdbwd_ms"] >= r["exp_fwdbwd_ms"] else "exp"
            name = f"floor ({kind_f} / {kind_b})"
        else:
            name = r["impl"]
        lines.append(f"| {shape} | {name} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | {sp} | {fl} |")
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
        ax.set_xlabel("B x T x C")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("milliseconds (log scale, lower is better)")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
