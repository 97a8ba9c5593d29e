"""Exported RWKV-4 programs on the CPU: onnxruntime and AOTInductor against our eager model, same
weights, side by side in one run.

    python benchmarks/bench_deploy.py                                  # L12-d768, ONNX
    python benchmarks/bench_deploy.py --aoti --json benchmarks/deploy_cpu.json

Random weights at an RWKV-4 Pile shape (vocab 50277) exported with ``rwkv_wkv.export`` (float32):
the gpt and step programs as ONNX (onnxruntime, CPU provider, all threads) and, with --aoti, as
AOTInductor packages (run through ``rwkv_wkv.export.load_package``; examples/aoti_runner runs the
same packages from C++). Every program's logits are compared with eager before any timing.
  prefill  one gpt call over a P-token prompt, B = 1, full logits (B, P, vocab) as the exported
           program returns them: tokens/s = P / time (ours: model(idx, return_state=True))
  token    one step continuing a state, B = 1 (ours: the fused step, what generate uses on the
           CPU, in fp32 and int8, and the Python step on to_inference_layout() weights; AOTInductor:
           the model's step, and packages of the fused step, export --fused fp32 / int8)
Medians after a warm-up; the ratios are the claims.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_generate  # noqa: E402
from bench_generate import make_model, parse_shape  # noqa: E402

from rwkv_wkv.errors import ArgumentParser, run_command  # noqa: E402
from rwkv_wkv.export import export_model, load_package  # noqa: E402


def timed(fn, repeats):
    return bench_generate.timed(fn, torch.device("cpu"), repeats)


def rel(a, b):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return ((a - b).abs().max() / b.abs().max()).item()


def onnx_runners(model, directory):
    import onnxruntime

    runs = {}
    for mode in ("gpt", "step"):
        path = Path(directory) / f"{mode}.onnx"
        t = time.perf_counter()
        export_model(model, "onnx", mode, path)
        print(f"# ONNX {mode}: exported in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        runs[mode] = (lambda s, n: lambda *xs: [torch.from_numpy(o) for o in s.run(
            None, {name: x.numpy() for name, x in zip(n, xs)})])(session, names)
    return runs


def aoti_runners(model, directory):
    """The gpt and step packages, and step packages of the fused CPU step (--fused fp32 / int8)."""
    runs = {}
    for mode, fused in (("gpt", None), ("step", None), ("step", "fp32"), ("step", "int8")):
        name = mode if fused is None else f"fused {fused}"
        path = Path(directory) / f"{name.replace(' ', '_')}.pt2"
        t = time.perf_counter()
        export_model(model, "aoti", mode, path, fused=fused)
        print(f"# AOTInductor {name}: compiled in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        runs[name] = load_package(path)
    return runs


def bench(n_layer, n_embd, args):
    model = make_model(n_layer, n_embd)
    prompt = torch.randint(0, model.config.vocab_size, (1, args.prefill), generator=torch.Generator().manual_seed(1))
    token = torch.tensor([7])
    with torch.no_grad():
        logits, _, state = model(prompt, return_state=True)
        step_logits, _ = model.step(token, state)
    fused = model.fused_step("fp32")
    fused_int8 = model.fused_step("int8")
    inference = make_model(n_layer, n_embd).to_inference_layout()

    def ours_gpt():
        with torch.no_grad():
            model(prompt, return_state=True)

    scratch = state.clone()

    def ours_fused():
        scratch.copy_(state)
        fused.step_(token, scratch)

    def ours_int8():
        scratch.copy_(state)
        fused_int8.step_(token, scratch)

    def ours_python():
        with torch.no_grad():
            inference.step(token, state)

    impls = {"ours (eager; fused step)": {"gpt": ours_gpt, "step": ours_fused},
             "ours (eager; Python step)": {"step": ours_python},
             "ours (eager; fused int8 step)": {"step": ours_int8}}
    with tempfile.TemporaryDirectory() as directory:
        exported = {"onnxruntime": onnx_runners(model, directory)}
        if args.aoti:
            exported["AOTInductor"] = aoti_runners(model, directory)
        for name, runs in exported.items():  # validated first
            got_logits, got_state = runs["gpt"](prompt)
            err_gpt = max(rel(got_logits, logits), rel(got_state, state))
            err_step = rel(runs["step"](token, state)[0], step_logits)
            print(f"# {name}: gpt logits/state rel error {err_gpt:.1e}, step {err_step:.1e}", file=sys.stderr)
            assert err_gpt < 1e-4 and err_step < 1e-4, f"{name} does not match eager"
            impls[name] = {"gpt": (lambda r: lambda: r(prompt))(runs["gpt"]),
                           "step": (lambda r: lambda: r(token, state))(runs["step"])}
            for weights, bound in (("fp32", 1e-4), ("int8", 1e-1)):  # (int8: its format's error)
                if f"fused {weights}" in runs:
                    err = rel(runs[f"fused {weights}"](token, state)[0], step_logits)
                    print(f"# {name} fused {weights} step: rel error {err:.1e}", file=sys.stderr)
                    assert err < bound, f"{name} fused {weights} does not match eager"
                    impls[f"{name} (fused {weights} step)"] = {
                        "step": (lambda r: lambda: r(token, state))(runs[f"fused {weights}"])}
        records = []
        for name, fns in impls.items():
            rec = {"shape": f"L{n_layer}-d{n_embd}", "impl": name, "threads": torch.get_num_threads()}
            if "gpt" in fns:
                seconds = timed(fns["gpt"], args.repeats)
                rec["prefill_tokens_per_s"] = args.prefill / seconds
            rec["per_token_ms"] = timed(fns["step"], args.tokens) * 1e3
            records.append(rec)
            print(f"# {rec}", file=sys.stderr, flush=True)
    return records


def format_table(records):
    base = {r["shape"]: r for r in records if r["impl"] == "ours (eager; fused step)"}
    lines = ["| shape | implementation | prefill (tok/s) | vs ours | per token (ms) | vs ours (fused) |",
             "|---|---|---:|---:|---:|---:|"]
    for r in records:
        b = base[r["shape"]]
        prefill = r.get("prefill_tokens_per_s")
        speed = f"{prefill:.0f}" if prefill else "-"
        ratio = f"{prefill / b['prefill_tokens_per_s']:.2f}x" if prefill else "-"
        lines.append(f"| {r['shape']} | {r['impl']} | {speed} | {ratio} | "
                     f"{r['per_token_ms']:.2f} | {r['per_token_ms'] / b['per_token_ms']:.2f}x |")
    return "\n".join(lines)


def main(argv=None):
    p = ArgumentParser(__doc__, prog="python benchmarks/bench_deploy.py")
    p.add_argument("--shapes", default="L12-d768", help="comma-separated L<layers>-d<width> (default L12-d768)")
    p.add_argument("--prefill", type=int, default=512, help="prompt length of the prefill timing (default 512)")
    p.add_argument("--tokens", type=int, default=32, help="single-token steps timed (median reported)")
    p.add_argument("--repeats", type=int, default=5, help="prefill repeats (median reported)")
    p.add_argument("--aoti", action="store_true", help="also AOTInductor packages (compiles: minutes)")
    p.add_argument("--json", default=None, help="write the records to this JSON file")
    args = p.parse_args(argv)
    records = []
    for shape in args.shapes.split(","):
        records += bench(*parse_shape(shape), args)
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": "python benchmarks/bench_deploy.py " + " ".join(argv or sys.argv[1:]),
                       "records": records}, f, indent=1)


if __name__ == "__main__":
    sys.exit(run_command(main))
