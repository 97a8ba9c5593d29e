"""Benchmark the WKV op against the naive Python loop and the hardware floor, side by side.

    python benchmarks/bench_wkv.py                   # full set, CPU, float32
    python benchmarks/bench_wkv.py --quick           # reduced set, under a minute on CPU
    python benchmarks/bench_wkv.py --device cuda --dtype bf16 --json out.json --plot out.png
    python benchmarks/bench_wkv.py --device cuda --rwkv-lm ~/RWKV-LM   # + RWKV-LM's kernel

For every shape it first validates the kernel against the naive loop (llm.c style: check, then
time), then times, in the same run:
  kernel  rwkv_wkv.wkv: forward, and forward+backward through autograd (on CUDA: the kernel
          chooses serial or T-chunked itself, rwkv_wkv.cuda_plan);
  serial  (CUDA only) the same with one chunk forced: one thread per (b, c) lane over all of T;
  rwkv-lm (CUDA, with --rwkv-lm DIR) RWKV-LM v4neo's own CUDA kernel, JIT-built from the user's
          checkout with RWKV-LM's own flags, called as RWKV-LM's model calls it;
  naive   rwkv_wkv.reference.wkv_naive, the Python loop over T (autograd for backward);
  floor   what no implementation can beat, measured the same way now. CPU: the larger of the
          memory floor (plain tensor ops moving the bytes the op must move: forward reads k, v
          and writes y; backward reads k, v, y, gy and writes gk, gv) and the exp floor
          (torch.exp over as many elements as the math needs exponentials, from a cache-resident
          buffer: forward 2 per element — one of each max-branch pair is exp(0) — backward 2).
          CUDA: the memory floor only, and its ratio is shown only where it binds (the kernel
          within 4x of it). At small B*C the GPU op is latency-bound — a chain of T dependent
          steps — so a bandwidth floor says nothing there ("latency-bound" in the table).
Times are medians over repeats after a warm-up; CUDA is timed with events. Ratios are the claims.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time

import torch
from rwkv_wkv.reference import wkv_naive
from tqdm import tqdm

import rwkv_wkv
from rwkv_wkv.errors import ArgumentParser, UsageError, run_command

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

    if device.type == "cuda":  # exps are nearly free on a GPU: only the memory floor can bind
        return {"mem_fwd_ms": mem_fwd, "mem_fwdbwd_ms": mem_fwd + mem_bwd, "fwd_ms": mem_fwd,
                "fwdbwd_ms": mem_fwd + mem_bwd}
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


class RWKVLMKernel:
    """RWKV-LM v4neo's WKV CUDA kernel, JIT-built from a user's RWKV-LM checkout with its own
    flags, wrapped as RWKV-LM's model uses it (w = -exp(time_decay) in Python, y saved for the
    backward, (B, C) parameter gradients summed over the batch). Its TORCH_LIBRARY block (which
    would register a second `wkv` namespace) is dropped; the pybind11 functions are used."""

    FILES = {"fp32": ("wkv_op.cpp", "wkv_cuda.cu"), "bf16": ("wkv_op_bf16.cpp", "wkv_cuda_bf16.cu")}

    def __init__(self, root, dtype, t_max):
        import os
        import tempfile

        from torch.utils.cpp_extension import load

        if dtype not in (torch.float32, torch.bfloat16):
            raise UsageError("--rwkv-lm: RWKV-LM's kernels take fp32 or bf16 only")
        kind = "bf16" if dtype == torch.bfloat16 else "fp32"
        # a fixed folder: a second run reuses the JIT build (torch rebuilds only if sources change)
        build = os.path.join(tempfile.gettempdir(), f"rwkv_wkv_bench_rwkvlm_{kind}_{t_max}")
        os.makedirs(build, exist_ok=True)
        sources, src_dir = self.sources(root, kind, build)
        flags = ["-res-usage", "--maxrregcount 60", "--use_fast_math", "-O3", "-Xptxas -O3", f"-DTmax={t_max}"]
        print(f"# building RWKV-LM's {kind} kernel from {src_dir} (Tmax={t_max}) ...", file=sys.stderr)
        self.mod = load(name=f"rwkvlm_wkv_{kind}_{t_max}", sources=sources, build_directory=build,
                        extra_cuda_cflags=flags, verbose=False)
        self.dtype = dtype
        mod = self.mod

        class Fn(torch.autograd.Function):
            @staticmethod
            def forward(ctx, time_decay, time_first, k, v):
                B, T, C = k.shape
                w = -torch.exp(time_decay.float().contiguous())
                u = time_first.to(k.dtype).contiguous()
                k, v = k.contiguous(), v.contiguous()
                y = torch.empty_like(k)
                mod.forward(B, T, C, w, u, k, v, y)
                ctx.save_for_backward(w, u, k, v, y)
                return y

            @staticmethod
            def backward(ctx, gy):
                w, u, k, v, y = ctx.saved_tensors
                B, T, C = k.shape
                gw = torch.empty(B, C, device=k.device, dtype=k.dtype)
                gu = torch.empty(B, C, device=k.device, dtype=k.dtype)
                gk, gv = torch.empty_like(k), torch.empty_like(k)
                mod.backward(B, T, C, w, u, k, v, y, gy.contiguous(), gw, gu, gk, gv)
                return gw.float().sum(0), gu.float().sum(0), gk, gv

        self.apply = Fn.apply

    @classmethod
    def sources(cls, root, kind, build):
        """Copies RWKV-LM's op and kernel files for `kind` into `build`, minus the op file's
        TORCH_LIBRARY(wkv, ...) block; returns ([op, kernel] paths, the folder they came from)."""
        import os
        import re

        op_name, cu_name = cls.FILES[kind]
        for d in (root, os.path.join(root, "RWKV-v4neo", "cuda"), os.path.join(root, "cuda")):
            if os.path.isfile(os.path.join(d, cu_name)):
                break
        else:
            raise UsageError(f"--rwkv-lm: no {cu_name} in {root} (give RWKV-LM's root or its RWKV-v4neo/cuda folder)")
        op_path = os.path.join(d, op_name)
        if not os.path.isfile(op_path):  # ../shared/tools/rwkvlm_reference names it ref_op*.cpp
            op_path = os.path.join(d, op_name.replace("wkv_op", "ref_op"))
        op_src = re.sub(r"TORCH_LIBRARY\s*\(\s*wkv\s*,\s*\w+\s*\)\s*\{[^}]*\}", "", open(op_path).read())
        out = [os.path.join(build, op_name), os.path.join(build, cu_name)]
        for path, text in zip(out, [op_src, open(os.path.join(d, cu_name)).read()]):
            if not os.path.isfile(path) or open(path).read() != text:  # unchanged: ninja keeps its build
                with open(path, "w") as f:
                    f.write(text)
        return out, d

    @staticmethod
    def accepts(shape):
        B, T, C = shape
        return (B * C) % min(C, 32) == 0  # its launch asserts this


def serial_fwd_and_fwdbwd(td, tf, k, v, gy):
    """As fwd_and_fwdbwd, with the setting held for the backward too."""
    fwd, fwdbwd = fwd_and_fwdbwd(rwkv_wkv.wkv, td, tf, k, v, gy)

    def hold(fn):
        def run():
            previous = rwkv_wkv.cuda_chunk_length()
            rwkv_wkv.cuda_chunk_length("serial")
            try:
                fn()
            finally:
                rwkv_wkv.cuda_chunk_length(previous)
        return run

    return hold(fwd), hold(fwdbwd)


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
        errs[name] = (
            (x.grad.float() - z.grad.float()).abs().max() / z.grad.float().abs().max().clamp_min(1e-30)
        ).item()
    bad = {kk: vv for kk, vv in errs.items() if not vv <= tol * (1 if kk != "y" else 3)}
    if bad:
        raise SystemExit(f"validation failed at {shape} {dtype}: {bad}")
    return errs


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="dtype of k, v, y (default: fp32)")
    p.add_argument("--quick", action="store_true", help="reduced shape set and repeats (under a minute on CPU)")
    p.add_argument("--shapes", default=None, help="override shapes, e.g. '1x1024x512,8x1024x512'")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (median reported)")
    p.add_argument(
        "--naive-budget",
        type=float,
        default=None,
        help="seconds of naive-loop timing per measurement before stopping repeats",
    )
    p.add_argument("--skip-naive", action="store_true", help="do not time the naive loop")
    p.add_argument(
        "--rwkv-lm",
        default=None,
        metavar="DIR",
        help="(CUDA) also time RWKV-LM's kernel, JIT-built from this RWKV-LM checkout (its root or RWKV-v4neo/cuda)",
    )
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    p.add_argument("--plot", default=None, help="write a bar chart (log scale) to this PNG file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and rwkv_wkv.build_info()["cuda"]):
        raise UsageError("--device cuda needs a GPU and a CUDA build of rwkv_wkv")
    dtype = DTYPES[args.dtype]
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    if args.shapes:
        shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    repeats = args.repeats or (5 if args.quick else 10)
    naive_budget = args.naive_budget if args.naive_budget is not None else (4.0 if args.quick else 15.0)
    warmup = 2
    timer = Timer(device)

    info = rwkv_wkv.build_info()
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads, kernel isa {info['cpu_isa']})"
    )
    print(f"# WKV benchmark: {where}, {args.dtype}, torch {torch.__version__}", file=sys.stderr)

    records, notes = [], []
    cuda = device.type == "cuda"
    impls = ["kernel"] + (["serial"] if cuda else []) + ["floor"] + ([] if args.skip_naive else ["naive"])
    rwkv_lm = None
    if args.rwkv_lm:
        if not cuda:
            raise UsageError("--rwkv-lm needs --device cuda (RWKV-LM's kernel is CUDA only)")
        rwkv_lm = RWKVLMKernel(args.rwkv_lm, dtype, t_max=max(s[1] for s in shapes))
        impls.insert(1, "rwkv-lm")
    bar = tqdm(total=len(shapes) * (len(impls) + 1), desc="bench", file=sys.stderr)
    for shape in shapes:
        bar.set_postfix_str(f"{shape} validate")
        validate(shape, device, dtype)
        bar.update()
        td, tf, k, v, gy = make_inputs(shape, device, dtype)
        for impl in impls:
            bar.set_postfix_str(f"{shape} {impl}")
            rec = {"shape": list(shape), "device": device.type, "dtype": args.dtype, "impl": impl}
            if impl == "kernel" and cuda:
                rec["chunk"] = rwkv_wkv.cuda_plan(*shape)
            if impl == "rwkv-lm" and not rwkv_lm.accepts(shape):
                notes.append(f"rwkv-lm at {shape}: refuses B*C % min(C, 32) != 0")
                bar.update()
                continue
            if impl == "floor":
                rec.update(floor_ms(timer, shape, device, dtype, warmup, repeats))
            else:
                if impl == "serial":
                    fwd, fwdbwd = serial_fwd_and_fwdbwd(td, tf, k, v, gy)
                else:
                    op = {"kernel": rwkv_wkv.wkv, "naive": wkv_naive}.get(impl) or rwkv_lm.apply
                    fwd, fwdbwd = fwd_and_fwdbwd(op, td, tf, k, v, gy)
                w = 1 if impl == "naive" else warmup
                budget = naive_budget if impl == "naive" else 30.0
                rec["fwd_ms"], n1 = timer(fwd, w, repeats, budget)
                rec["fwdbwd_ms"], n2 = timer(fwdbwd, w, repeats, budget)
                if impl == "naive" and min(n1, n2) < repeats:
                    notes.append(
                        f"naive at {shape}: median of {n1} (fwd) / {n2} (fwd+bwd) runs, "
                        f"capped at ~{naive_budget:.0f}s each"
                    )
            records.append(rec)
            bar.update()
    bar.close()

    below = [f"{tuple(r['shape'])} {r['impl']} {label} {r[key]:.3f} ms < floor {floor[key]:.3f} ms"
             for r in records if r["impl"] not in ("floor", "naive")
             for floor in [next(f for f in records if f["impl"] == "floor" and f["shape"] == r["shape"])]
             for key, label in (("fwd_ms", "fwd"), ("fwdbwd_ms", "fwd+bwd")) if r[key] < floor[key]]
    if below:  # nothing can beat its floor: the floor (or the kernel) was timed while something else ran
        raise UsageError("unmeasurable run, nothing written: a kernel beat what no implementation can beat ("
                         + "; ".join(below) + "); another program was using the machine: run again when it is quiet")
    if cuda:
        notes.append("GPU floor: memory traffic only; its ratio is shown where it binds (kernel within 4x), "
                     "elsewhere the op is latency-bound (T dependent steps per lane)")
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
    with_ref = any(r["impl"] == "rwkv-lm" for r in records)
    lines = [
        "| shape (B, T, C) | impl | fwd ms | fwd+bwd ms | speedup vs naive (fwd / fwd+bwd) | "
        + ("vs RWKV-LM (fwd / fwd+bwd) | " if with_ref else "") + "ratio to floor (fwd / fwd+bwd) |",
        "|---|---|---:|---:|---:|" + ("---:|" if with_ref else "") + "---:|",
    ]

    def floor_ratio(r, floor, key):
        ratio = r[key] / floor[key]
        if r["device"] == "cuda" and ratio > 4:
            return "latency-bound"
        return f"{ratio:.2f}"

    for r in records:
        shape = tuple(r["shape"])
        naive, floor, ref = by.get((shape, "naive")), by.get((shape, "floor")), by.get((shape, "rwkv-lm"))
        sp = f"{naive['fwd_ms'] / r['fwd_ms']:.0f}x / {naive['fwdbwd_ms'] / r['fwdbwd_ms']:.0f}x" if naive else "-"
        vs = (
            f"{ref['fwd_ms'] / r['fwd_ms']:.2f}x / {ref['fwdbwd_ms'] / r['fwdbwd_ms']:.2f}x"
            if ref and r["impl"] != "floor"
            else "-"
        )
        fl = f"{floor_ratio(r, floor, 'fwd_ms')} / {floor_ratio(r, floor, 'fwdbwd_ms')}" if floor else "-"
        if r["impl"] == "floor":
            if "exp_fwd_ms" in r:
                kind_f = "mem" if r["mem_fwd_ms"] >= r["exp_fwd_ms"] else "exp"
                kind_b = "mem" if r["mem_fwdbwd_ms"] >= r["exp_fwdbwd_ms"] else "exp"
                name = f"floor ({kind_f} / {kind_b})"
            else:
                name = "floor (mem)"
            fl = "-"
        elif r["impl"] == "kernel" and "chunk" in r:
            name = "kernel (serial)" if r["chunk"] >= shape[1] else f"kernel (chunk {r['chunk']})"
        else:
            name = r["impl"]
        ref_col = f" {vs} |" if with_ref else ""
        lines.append(f"| {shape} | {name} | {r['fwd_ms']:.3f} | {r['fwdbwd_ms']:.3f} | {sp} |{ref_col} {fl} |")
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
    sys.exit(run_command(main))
