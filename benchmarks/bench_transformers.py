"""One Hugging Face transformers RWKV training step, with its own WKV and with ours, side by side.

    python benchmarks/bench_transformers.py                      # L4-d512, vocab 1024, B 2, T 1024
    python benchmarks/bench_transformers.py --json out.json --layers 12 --hidden 768 --batch 1

Builds a random ``RwkvForCausalLM`` (transformers' own model and init), checks first that the
patched and unpatched steps agree (loss and gradients, llm.c style: validate, then time), then
times forward + backward of the language-model loss, alternating unpatched / patched steps, and
prints the medians and their ratio. Unpatched, transformers' WKV on the CPU is a Python loop over
T (on CUDA, without internet, too); patched (``rwkv_wkv.patch_transformers()``) it is our kernel.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import torch
from tqdm import tqdm

import rwkv_wkv
from rwkv_wkv.errors import ArgumentParser, run_command


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--ctx", type=int, default=1024, help="T, the sequence length (default 1024)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    try:
        import transformers
    except ImportError:
        sys.exit("this benchmark needs transformers: pip install transformers")

    torch.manual_seed(0)
    config = transformers.RwkvConfig(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                                     attention_hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                                     context_length=args.ctx)
    model = transformers.RwkvForCausalLM(config).to(args.device).train()
    ids = torch.randint(0, args.vocab, (args.batch, args.ctx), device=args.device)

    def step():
        model.zero_grad(set_to_none=True)
        loss = model(ids, labels=ids).loss
        loss.backward()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return loss.item()

    def grads():
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    # validate
    rwkv_wkv.unpatch_transformers()
    loss_ref = step()
    g_ref = grads()
    rwkv_wkv.patch_transformers()
    loss_ours = step()
    g_ours = grads()
    grad_err = ((g_ours - g_ref).abs().max() / g_ref.abs().max()).item()
    print(f"# validate: loss {loss_ref:.6f} (transformers) vs {loss_ours:.6f} (patched); "
          f"max gradient difference {grad_err:.2e} of the largest", flush=True)
    if abs(loss_ours - loss_ref) > 1e-4 * abs(loss_ref) or grad_err > 1e-3:
        sys.exit("validation failed: the patched step does not match transformers' own")

    times = {"transformers": [], "patched": []}
    for _ in tqdm(range(args.repeats), desc="steps", file=sys.stderr):
        for name, patch in (("transformers", rwkv_wkv.unpatch_transformers), ("patched", rwkv_wkv.patch_transformers)):
            patch()
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
    rwkv_wkv.unpatch_transformers()
    med = {k: statistics.median(v) for k, v in times.items()}
    shape = f"L{args.layers}-d{args.hidden}, vocab {args.vocab}, (B, T) = ({args.batch}, {args.ctx})"
    print(f"# transformers {transformers.__version__} RwkvForCausalLM training step (forward + backward), "
          f"{shape}, {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| WKV | step s (median) | speed-up |")
    print("|---|---:|---:|")
    print(f"| transformers' own (Python loop over T) | {med['transformers']:.3f} | 1.00x |")
    print(f"| rwkv_wkv.patch_transformers() | {med['patched']:.3f} | {med['transformers'] / med['patched']:.1f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": shape, "device": args.device, "torch": torch.__version__,
                       "transformers": transformers.__version__, "seconds": times, "median": med,
                       "speedup": med["transformers"] / med["patched"]}, f, indent=1)


if __name__ == "__main__":
    sys.exit(run_command(main))
