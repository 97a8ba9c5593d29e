"""Generate text from an RWKV-4 checkpoint, streaming it as it is produced.

    python -m rwkv_wkv.generate out/enwik8/model.pth --prompt "The " --tokenizer bytes
    python -m rwkv_wkv.generate path/to/rwkv-4-169m-hf --prompt "The Eiffel tower is"
    python -m rwkv_wkv.generate RWKV-4-Pile-169M.pth --tokenizer 20B_tokenizer.json --prompt "Hi"

CHECKPOINT: a Hugging Face RWKV directory (its tokenizer.json is used unless --tokenizer says
otherwise), an RWKV-LM .pth, or this package's trainer checkpoint. --tokenizer: "bytes" (the
byte-level models this package trains) or a tokenizer.json for the `tokenizers` library (e.g.
the 20B tokenizer of RWKV-4 Pile models). Ends with the prompt's and the generation's tokens/s
on stderr.
"""

from __future__ import annotations

import math
import sys
import time

import torch

from .errors import ArgumentParser, UsageError, run_command
from .rwkv4.model import RWKV
from .tokenizer import tokenizer_for

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def main(argv=None):
    """The command: its exit status (2 and one ``error:`` line for a user mistake)."""
    return run_command(_main, argv)


def _main(argv):
    p = ArgumentParser(__doc__, prog="python -m rwkv_wkv.generate")
    p.add_argument("checkpoint", help="Hugging Face RWKV directory, RWKV-LM .pth, or trainer checkpoint")
    p.add_argument("--prompt", required=True, help="the text to continue")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="'bytes' or a tokenizer.json (default: the checkpoint's own, or bytes for vocab 256)",
    )
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.85, help="nucleus sampling mass (default 0.85; 1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="weights' dtype (default fp32)")
    return run(p.parse_args(argv))


def check_args(args):
    """Every option's value, checked before anything is loaded."""
    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1] (1 = off), got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.prompt:
        raise UsageError("--prompt is empty: give some text to continue")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda (or cuda:N), got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but no GPU is available")
    return device


def run(args):
    device = check_args(args)
    try:
        model = RWKV.from_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(str(e)) from e
    tok = tokenizer_for(args.tokenizer, args.checkpoint, model.config.vocab_size)
    ids = tok.encode(args.prompt)
    if not ids:
        raise UsageError("the prompt encodes to no tokens")
    model = model.to(device=device, dtype=DTYPES[args.dtype]).eval()
    if device.type == "cpu":
        model.to_inference_layout()
    print(f"# {args.checkpoint}: L{model.config.n_layer}-d{model.config.n_embd}, vocab {model.config.vocab_size}, "
          f"{model.num_params() / 1e6:.1f}M parameters, {device.type} {args.dtype}; prompt {len(ids)} tokens",
          file=sys.stderr, flush=True)
    # A tokenizer smaller than the model's (padded) vocabulary: ids it cannot decode are masked.
    vocab_limit = tok.vocab_size if tok.vocab_size < model.config.vocab_size else None
    if vocab_limit is not None:
        print(f"# the tokenizer has {tok.vocab_size} tokens, the model {model.config.vocab_size}: "
              f"ids >= {tok.vocab_size} are never sampled", file=sys.stderr, flush=True)
    decode = tok.stream_decoder()
    times = []

    def show(new_ids):
        times.append(time.perf_counter())
        sys.stdout.write(decode(new_ids.tolist()))
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    t0 = time.perf_counter()
    model.generate(torch.tensor(ids), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, stream=show, vocab_limit=vocab_limit)
    sys.stdout.write("\n")
    sys.stdout.flush()
    prompt_s = times[0] - t0
    gen_s = times[-1] - times[0]
    rate = f"{(len(times) - 1) / gen_s:.1f} tokens/s" if len(times) > 1 and gen_s > 0 else "-"
    print(f"# prompt: {len(ids)} tokens in {prompt_s:.3f} s ({len(ids) / prompt_s:.1f} tokens/s, first token "
          f"included); generation: {len(times)} tokens, {rate}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
