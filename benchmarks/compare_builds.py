"""Two builds of rwkv_wkv side by side on this machine: the installed one and another (e.g. the
commit before a change, its package folder copied somewhere), timed in alternating processes.

    # keep the old build: cp -r $(python -c "import rwkv_wkv, os; print(os.path.dirname(rwkv_wkv.__file__))") /tmp/old/
    python benchmarks/compare_builds.py --other /tmp/old --label-other "C++ API" --label-installed "stable ABI"

Per shape (CPU, float32; the README's shapes by default), in each process:
  kernel fwd / fwd+bwd  RWKV-LM's ops with preallocated outputs (wkv.forward, wkv.backward): the
                        kernels alone, no allocation;
  wkv fwd / fwd+bwd     rwkv_wkv.wkv through autograd, as a model calls it (allocates its outputs:
                        on this VM first-touch page faults of fresh outputs vary run to run);
and the per-call cost of a tiny call (B=1, T=1, C=32, no grad). Two builds cannot share a process
(both register torch.ops.wkv), hence the alternation; each number is the median over rounds of
each process's best-of-repeats. Ratios other/installed > 1 mean the installed build is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time, torch, rwkv_wkv
shapes, repeats = json.loads(sys.argv[1]), int(sys.argv[2])

def best_ms(fn, n):
    fn()
    best = float("inf")
    for _ in range(n):
        t = time.perf_counter(); fn(); best = min(best, time.perf_counter() - t)
    return best * 1e3

out = {"torch": torch.__version__, "build": rwkv_wkv.build_info(), "shapes": {}}
for B, T, C in shapes:
    g = torch.Generator().manual_seed(0)
    td = torch.linspace(-5, 1.5, C) + 0.3 * torch.randn(C, generator=g)
    tf = 0.5 + 0.5 * torch.randn(C, generator=g)
    k, v, gy = (torch.randn(B, T, C, generator=g) for _ in range(3))
    w, y, gk, gv = -torch.exp(td), torch.empty(B, T, C), torch.empty(B, T, C), torch.empty(B, T, C)
    gw, gu = torch.zeros(B, C), torch.zeros(B, C)
    fwd = lambda: torch.ops.wkv.forward(B, T, C, w, tf, k, v, y)
    bwd = lambda: torch.ops.wkv.backward(B, T, C, w, tf, k, v, gy, gw, gu, gk, gv)
    leaves = [x.clone().requires_grad_() for x in (td, tf, k, v)]
    def wkv_fwd():
        with torch.no_grad():
            rwkv_wkv.wkv(td, tf, k, v)
    def wkv_fwdbwd():
        rwkv_wkv.wkv(*leaves).backward(gy)
    n = repeats if B * T * C <= 1 << 22 else max(3, repeats // 4)
    out["shapes"][f"{B}x{T}x{C}"] = {
        "kernel fwd": best_ms(fwd, n), "kernel fwd+bwd": best_ms(lambda: (fwd(), bwd()), n),
        "wkv fwd": best_ms(wkv_fwd, n), "wkv fwd+bwd": best_ms(wkv_fwdbwd, n)}
td, tf, k, v = torch.randn(32), torch.randn(32), torch.randn(1, 1, 32), torch.randn(1, 1, 32)
w, y = -torch.exp(td), torch.empty(1, 1, 32)
with torch.no_grad():
    for name, fn in (("tiny wkv()", lambda: rwkv_wkv.wkv(td, tf, k, v)),
                     ("tiny wkv.forward", lambda: torch.ops.wkv.forward(1, 1, 32, w, tf, k, v, y))):
        for _ in range(2000): fn()
        out[name] = min(best_ms(lambda: [fn() for _ in range(2000)], 5) / 2000 * 1e3 for _ in range(3))
print(json.dumps(out))
"""


def run(pythonpath, shapes, repeats):
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(shapes), str(repeats)], env=env, cwd="/",
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--other", required=True, help="a folder holding another build's rwkv_wkv/ package")
    p.add_argument("--label-other", default="other")
    p.add_argument("--label-installed", default="installed")
    p.add_argument("--shapes", default="1x1024x512,8x1024x512,4x4096x1024,32x256x768,1x16384x512")
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two processes (default 3)")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per measurement (best taken)")
    p.add_argument("--json", default=None, help="write every round's numbers here")
    args = p.parse_args()
    shapes = [[int(x) for x in s.split("x")] for s in args.shapes.split(",")]
    rounds = {"other": [], "installed": []}
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds}", file=sys.stderr, flush=True)
        rounds["other"].append(run(args.other, shapes, args.repeats))
        rounds["installed"].append(run(None, shapes, args.repeats))
    a, b = rounds["other"][0], rounds["installed"][0]
    print(f"# {args.label_other}: {a['build'].get('abi', 'C++ API')} build for torch {a['build']['torch']} | "
          f"{args.label_installed}: {b['build'].get('abi', 'C++ API')} build for torch {b['build']['torch']} | "
          f"running torch {b['torch']}, {args.rounds} alternating rounds, medians")
    print(f"| shape (B, T, C) | measure | {args.label_other} ms | {args.label_installed} ms | ratio |")
    print("|---|---|---:|---:|---:|")
    def med(who, f):
        return statistics.median(f(r) for r in rounds[who])
    for s in rounds["other"][0]["shapes"]:
        for m in rounds["other"][0]["shapes"][s]:
            x, y = med("other", lambda r: r["shapes"][s][m]), med("installed", lambda r: r["shapes"][s][m])
            print(f"| ({s.replace('x', ', ')}) | {m} | {x:.3f} | {y:.3f} | {x / y:.2f} |")
    for m in ("tiny wkv()", "tiny wkv.forward"):
        x, y = med("other", lambda r: r[m]), med("installed", lambda r: r[m])
        print(f"| (1, 1, 32) | {m}, per call (µs) | {x:.2f} | {y:.2f} | {x / y:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rounds, f, indent=1)


if __name__ == "__main__":
    main()
