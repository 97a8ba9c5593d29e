"""Our CPU kernels and generation on a machine that is doing something else too: every call at the
default thread count (torch.get_num_threads(); here 2) beside the same call at 1 thread, idle and
under loads the benchmark starts itself.

    python benchmarks/bench_busy.py                               # every load and call, 3 rounds
    python benchmarks/bench_busy.py --loads idle,spin1 --rounds 2 --calls wkv,token
    python benchmarks/bench_busy.py --baseline /path/to/venv/bin/python   # another build beside ours

Loads (started before a round's measurement, stopped after it):
  idle     nothing else
  spin1    one process spinning on a core (another program's busy thread)
  spin2    two spinning processes (on a 2-core machine: every core busy)
  torch2   a second multi-threaded program: torch 512 x 512 matmuls in a loop on 2 threads
Calls (each timed many times; median and p90 of all the times, over every round):
  wkv B-T-C     rwkv_wkv.wkv forward at (1, 4, 128), (1, 1024, 512), (8, 1024, 512), in µs
  wkv7          rwkv_wkv.wkv7 forward at (1, 256, 12, 64), in µs
  matmul        torch's own 256 x 256 float32 matmul (MKL / OpenMP), in µs: for reference
  token FMT     one fused generation step (torch.ops.wkv.rwkv7_step) at the 0.1B shape (RWKV-7
                L12-d768, vocab 65536, random weights) in fp32 and int8, in ms
  train demo    one training step of the README's demo model (RWKV-4 L4-d128, bytes, batch 16 x 128:
                forward, backward, AdamW), in ms: mostly torch's own ops (matmuls, layer norms)
With --profile, the measuring process also profiles 10 demo training steps at N threads
(torch.profiler) and reports the self time of our ops (wkv::*) and of torch's, per load: what a
busy core costs each of them.
Each round runs a fresh measuring process per build (ours, and --baseline's python if given) under
each load; inside it every call alternates blocks at N threads and at 1 thread. The claim is the
ratio N-thread / 1-thread of the median and of the p90: at most 1 means parallelism never costs.
With --baseline the same process runs under another python (e.g. a venv with an older build of
rwkv_wkv): both builds are measured under the same loads, interleaved.
Writes --json and a PNG chart (--png) of the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LOADS = ("idle", "spin1", "spin2", "torch2")
SPIN = "while True: pass"
TORCH_LOAD = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
              "while True:\n    a @ a\n")
# call name -> (samples per block at N threads / 1 thread, blocks per round)
CALLS = {
    "wkv 1-4-128": (200, 4),
    "wkv 1-1024-512": (40, 4),
    "wkv 8-1024-512": (8, 4),
    "wkv7 1-256-12-64": (20, 4),
    "matmul 256": (100, 4),
    "token fp32": (10, 3),
    "token int8": (20, 3),
    "train demo": (5, 3),
}
TOKEN_SHAPE = dict(vocab_size=65536, n_layer=12, n_embd=768, head_size=64)


# ---- the measuring process ----------------------------------------------------------------------

def make_calls(names, checkpoint):
    import torch

    import rwkv_wkv
    calls = {}
    g = torch.Generator().manual_seed(0)
    for name in names:
        kind, _, arg = name.partition(" ")
        if kind == "wkv":
            B, T, C = (int(x) for x in arg.split("-"))
            td, tf = torch.randn(C, generator=g), torch.randn(C, generator=g)
            k, v = torch.randn(B, T, C, generator=g), torch.randn(B, T, C, generator=g)
            calls[name] = lambda td=td, tf=tf, k=k, v=v: rwkv_wkv.wkv(td, tf, k, v)
        elif kind == "wkv7":
            B, T, H, N = (int(x) for x in arg.split("-"))
            r, w, k, v, kk = (torch.randn(B, T, H, N, generator=g) for _ in range(5))
            kk = torch.nn.functional.normalize(kk, dim=-1)
            w = -torch.nn.functional.softplus(w) - 0.5
            a, b = -kk, kk * torch.sigmoid(torch.randn(B, T, H, N, generator=g))
            calls[name] = lambda r=r, w=w, k=k, v=v, a=a, b=b: rwkv_wkv.wkv7(r, w, k, v, a, b)
        elif kind == "matmul":
            n = int(arg)
            x = torch.randn(n, n, generator=g)
            calls[name] = lambda x=x: x @ x
        elif kind == "token":
            from rwkv_wkv import RWKV7, RWKV7Config
            from rwkv_wkv.fused_step import FusedStep
            model = RWKV7(RWKV7Config(**TOKEN_SHAPE))
            model.load_state_dict(torch.load(checkpoint, mmap=True, weights_only=True), assign=True)
            plan = FusedStep(model.eval(), weights=arg)
            state = model.init_state(1)
            tokens = torch.tensor([1])
            calls[name] = lambda plan=plan, state=state, tokens=tokens: plan.step_(tokens, state)
        elif kind == "train":
            calls[name] = demo_train_step()
        else:
            raise ValueError(f"unknown call {name!r}")
    return calls


def demo_train_step():
    """One training step at the demo's shapes (python -m rwkv_wkv.train's demo preset)."""
    import torch

    from rwkv_wkv import RWKV, RWKVConfig
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(vocab_size=256, n_layer=4, n_embd=128, ctx_len=128))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 256, (16, 129))

    def step():
        _, loss = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def profile_demo(threads, steps=10):
    """Self CPU time (ms per step) of our ops and of torch's in the demo's training steps."""
    import torch
    torch.set_num_threads(threads)
    step = demo_train_step()
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        wall = time.perf_counter() - t
    ours = theirs = 0.0
    top = {}
    for e in prof.key_averages():
        if e.key.startswith("wkv::"):
            ours += e.self_cpu_time_total
        elif e.key.startswith("aten::"):
            theirs += e.self_cpu_time_total
            top[e.key] = e.self_cpu_time_total
    biggest = sorted(top.items(), key=lambda kv: -kv[1])[:5]
    return {"wall_ms": wall * 1e3 / steps, "ours_ms": ours / 1e3 / steps, "torch_ms": theirs / 1e3 / steps,
            "torch_top_ms": {k: v / 1e3 / steps for k, v in biggest}}


def measure(names, threads, checkpoint):
    """Runs in the measuring process: {call: {"N": [seconds...], "1": [...]}}."""
    import torch
    calls = make_calls(names, checkpoint)
    out = {}
    for name, fn in calls.items():
        samples, blocks = CALLS[name]
        times = {str(threads): [], "1": []}
        for n in (threads, 1):  # warm-up at both counts (starts the workers)
            torch.set_num_threads(n)
            fn()
            fn()
        for _ in range(blocks):
            for n in (threads, 1):
                torch.set_num_threads(n)
                for _ in range(samples):
                    t = time.perf_counter()
                    fn()
                    times[str(n)].append(time.perf_counter() - t)
        torch.set_num_threads(threads)
        out[name] = times
    return out


# ---- the orchestrating process ------------------------------------------------------------------

def start_load(load):
    if load == "idle":
        return []
    if load in ("spin1", "spin2"):
        return [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(int(load[-1]))]
    if load == "torch2":
        return [subprocess.Popen([sys.executable, "-c", TORCH_LOAD])]
    raise ValueError(f"unknown load {load!r}")


def stop_load(procs):
    for p in procs:
        p.kill()
        p.wait()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def make_checkpoint(path):
    import torch

    from rwkv_wkv import RWKV7, RWKV7Config
    torch.manual_seed(0)
    model = RWKV7(RWKV7Config(**TOKEN_SHAPE))
    with torch.no_grad():  # (the init zeroes several matrices: timing wants real numbers)
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, p.shape[-1] ** -0.5)
    torch.save(model.state_dict(), path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, from {', '.join(LOADS)}")
    p.add_argument("--calls", default="all",
                   help="comma-separated prefixes of the call names (wkv, wkv7, matmul, token), or all")
    p.add_argument("--rounds", type=int, default=3, help="rounds (a fresh process per build and load each)")
    p.add_argument("--threads", type=int, default=None, help="N, the thread count beside 1 (default: torch's)")
    p.add_argument("--baseline", default=None, help="another python whose rwkv_wkv to measure beside ours")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--png", default=None, help="draw the ratios here")
    p.add_argument("--profile", action="store_true",
                   help="also profile the demo's training steps: our ops' and torch's self time per load")
    p.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # (the measuring process)
    args = p.parse_args(argv)

    if args.measure:
        spec = json.loads(args.measure)
        out = measure(spec["calls"], spec["threads"], spec["checkpoint"])
        if spec.get("profile"):
            out["_profile"] = profile_demo(spec["threads"])
        print(json.dumps(out))
        return 0

    import torch
    threads = args.threads or torch.get_num_threads()
    loads = [x for x in args.loads.split(",") if x]
    for load in loads:
        if load not in LOADS:
            p.error(f"--loads: unknown load {load!r} (choose from {', '.join(LOADS)})")
    wanted = [x for x in args.calls.split(",") if x]
    names = [n for n in CALLS if args.calls == "all" or any(n.split(" ")[0] == w for w in wanted)]
    if not names:
        p.error(f"--calls: no call matches {args.calls!r}")
    builds = {"ours": sys.executable}
    if args.baseline:
        builds["baseline"] = args.baseline
    results = {b: {load: {n: {"N": [], "1": []} for n in names} for load in loads} for b in builds}
    from tqdm import tqdm
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "rwkv7-0.1b.pt")
        if any(n.startswith("token") for n in names):
            make_checkpoint(checkpoint)
        spec = json.dumps({"calls": names, "threads": threads, "checkpoint": checkpoint, "profile": args.profile})
        profiles = {b: {load: [] for load in loads} for b in builds}
        steps = [(r, load, b) for r in range(args.rounds) for load in loads for b in builds]
        for r, load, build in tqdm(steps, desc="rounds x loads x builds"):
            procs = start_load(load)
            try:
                time.sleep(0.5)  # (the load is running)
                out = subprocess.run([builds[build], os.path.abspath(__file__), "--measure", spec],
                                     capture_output=True, text=True, check=False)
            finally:
                stop_load(procs)
            if out.returncode != 0:
                raise SystemExit(f"the measuring process ({build}, {load}) failed:\n{out.stderr[-3000:]}")
            measured = json.loads(out.stdout.strip().splitlines()[-1])
            if "_profile" in measured:
                profiles[build][load].append(measured.pop("_profile"))
            for name, times in measured.items():
                results[build][load][name]["N"] += times[str(threads)]
                results[build][load][name]["1"] += times["1"]

    summary = []
    for build in builds:
        for load in loads:
            for name in names:
                t = results[build][load][name]
                unit = 1e3 if name.startswith(("token", "train")) else 1e6
                row = {"build": build, "load": load, "call": name, "unit": "ms" if unit == 1e3 else "us",
                       "threads": threads, "samples": len(t["N"])}
                for key, xs in (("n", t["N"]), ("one", t["1"])):
                    row[f"{key}_median"] = statistics.median(xs) * unit
                    row[f"{key}_p90"] = pct(xs, 0.9) * unit
                row["ratio_median"] = row["n_median"] / row["one_median"]
                row["ratio_p90"] = row["n_p90"] / row["one_p90"]
                summary.append(row)
    print(f"\n{threads} threads vs 1 thread (median / p90); ratio = {threads}-thread / 1-thread "
          f"(<= 1: parallelism never costs); {args.rounds} rounds")
    header = f"{'build':9} {'load':7} {'call':18} {'N median':>10} {'N p90':>10} {'1 median':>10} {'1 p90':>10} " \
             f"{'r med':>6} {'r p90':>6}"
    print(header)
    for row in summary:
        print(f"{row['build']:9} {row['load']:7} {row['call']:18} {row['n_median']:>10.1f} {row['n_p90']:>10.1f} "
              f"{row['one_median']:>10.1f} {row['one_p90']:>10.1f} {row['ratio_median']:>6.2f} "
              f"{row['ratio_p90']:>6.2f}  {row['unit']}")
    profile_rows = []
    if args.profile:
        print(f"\nThe demo's training step at {threads} threads, profiled (torch.profiler, self CPU time per step, "
              f"the median over rounds): our ops (wkv::*) and torch's (aten::*)")
        print(f"{'build':9} {'load':7} {'wall ms':>8} {'ours ms':>8} {'torch ms':>9}  torch's largest")
        for build in builds:
            for load in loads:
                ps = profiles[build][load]
                row = {"build": build, "load": load,
                       **{k: statistics.median(x[k] for x in ps) for k in ("wall_ms", "ours_ms", "torch_ms")},
                       "torch_top_ms": ps[len(ps) // 2]["torch_top_ms"]}
                profile_rows.append(row)
                top = ", ".join(f"{k[6:]} {v:.1f}" for k, v in list(row["torch_top_ms"].items())[:3])
                print(f"{build:9} {load:7} {row['wall_ms']:>8.1f} {row['ours_ms']:>8.1f} "
                      f"{row['torch_ms']:>9.1f}  {top}")
    meta = {"threads": threads, "rounds": args.rounds, "cpus": os.cpu_count(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "builds": builds}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": summary, "demo_profile": profile_rows}, f, indent=1)
    if args.png:
        plot(summary, loads, names, list(builds), threads, args.png)
    return 0


def plot(summary, loads, names, builds, threads, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(builds), 2, figsize=(13, 3.6 * len(builds)), squeeze=False)
    width = 0.8 / len(loads)
    for bi, build in enumerate(builds):
        for ki, key in enumerate(("ratio_median", "ratio_p90")):
            ax = axes[bi][ki]
            for li, load in enumerate(loads):
                ys = [next(r[key] for r in summary if r["build"] == build and r["load"] == load and r["call"] == n)
                      for n in names]
                ax.bar([i + li * width for i in range(len(names))], ys, width, label=load)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30, ha="right",
                          fontsize=8)
            ax.set_ylabel(f"{threads} threads / 1 thread")
            ax.set_title(f"{build}: {'median' if ki == 0 else 'p90'} (below 1: parallelism helps)", fontsize=10)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
