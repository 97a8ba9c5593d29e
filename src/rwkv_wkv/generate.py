"""Generate text from an RWKV-4 or RWKV-7 checkpoint, streaming it as it is produced.

    python -m rwkv_wkv.generate out/enwik8/model.pth --prompt "The " --tokenizer bytes
    python -m rwkv_wkv.generate path/to/rwkv-4-169m-hf --prompt "The Eiffel tower is"
    python -m rwkv_wkv.generate RWKV-4-Pile-169M.pth --tokenizer 20B_tokenizer.json --prompt "Hi"
    python -m rwkv_wkv.generate RWKV-x070-World-0.1B.pth --tokenizer world --prompt "User: hi"
    python -m rwkv_wkv.generate rwkv7.pth --state out/tune/state.pth --prompt "A" --prompt "B"

CHECKPOINT: an RWKV-LM .pth (RWKV-4 or x070), a Hugging Face directory (RWKV-4's, or fla-hub's
RWKV-7; its tokenizer.json is used unless --tokenizer says otherwise), or this package's trainer
checkpoint; the generation is detected. --tokenizer: "bytes" (the byte-level models this
package trains), a tokenizer.json for the `tokenizers` library (e.g. the 20B tokenizer of
RWKV-4 Pile models), or RWKV's World vocabulary (rwkv_vocab_v20230424.txt, of RWKV-7 World / G1
models): its path, or "world" for the copy beside the checkpoint or in ChatRWKV's `rwkv`
package (a model of vocabulary 65536 uses it by default when found). --state: a tuned initial
state (python -m rwkv_wkv.train --state-tune) for an RWKV-7 model. Several --prompt: decoded
together as one batch (any lengths), each printed when done. Ends with the prompt's and the
generation's tokens/s on stderr.
"""

from __future__ import annotations

import math
import sys
import time

import torch

from .errors import ArgumentParser, UsageError, run_command
from .fused_step import FusedStep
from .models import from_checkpoint
from .tokenizer import tokenizer_for

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


def main(argv=None):
    """The command: its exit status (2 and one ``error:`` line for a user mistake)."""
    return run_command(_main, argv)


def _main(argv):
    p = ArgumentParser(__doc__, prog="python -m rwkv_wkv.generate")
    p.add_argument("checkpoint", help="Hugging Face RWKV directory, RWKV-LM .pth, or trainer checkpoint")
    p.add_argument("--prompt", required=True, action="append",
                   help="the text to continue (repeat it for a batch of prompts)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="'bytes', a tokenizer.json, 'world' or a World vocabulary file (default: the checkpoint's own, "
        "bytes for vocab 256, the World vocabulary for 65536)",
    )
    p.add_argument("--state", default=None, help="a tuned initial state file (RWKV-7; from train --state-tune)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely tokens")
    p.add_argument("--top-p", type=float, default=0.85, help="nucleus sampling mass (default 0.85; 1 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--dtype", default="fp32", choices=[*DTYPES, "int8", "q4"],
                   help="weights' format (default fp32). On the CPU the model generates through the fused step "
                        "with its matrices in this format (int8: per-row scales; q4: 4-bit, a scale per 32 inputs; "
                        "the prompt runs in fp32); elsewhere (and for fp64) the model is cast to it (int8, q4: "
                        "CPU fused step only)")
    p.add_argument("--no-fused", action="store_true",
                   help="generate with the Python step (the fused step's reference) instead of the fused one")
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
    if not all(args.prompt):
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
        model = from_checkpoint(args.checkpoint)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(str(e)) from e
    if args.state is not None:
        if model.generation != 7:
            raise UsageError(f"--state: a tuned state is for RWKV-7 models; {args.checkpoint} is "
                             f"RWKV-{model.generation}")
        try:
            model.load_tuned_state(args.state)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--state: {e}") from e
    tok = tokenizer_for(args.tokenizer, args.checkpoint, model.config.vocab_size)
    prompts = [tok.encode(text) for text in args.prompt]
    if not all(prompts):
        raise UsageError("a prompt encodes to no tokens")
    fused = device.type == "cpu" and not args.no_fused and args.dtype != "fp64"
    if args.dtype in ("int8", "q4") and not fused:
        raise UsageError(f"--dtype {args.dtype} is a format of the fused step: on the CPU, without --no-fused")
    if fused:  # the prompt in float32 GPT mode, every new token one fused call on the chosen format
        model = model.float().eval()
        fused = FusedStep(model, weights=args.dtype)
    else:
        model = model.to(device=device, dtype=DTYPES[args.dtype]).eval()
        if device.type == "cpu":
            model.to_inference_layout()
    c = model.config
    lengths = "/".join(str(len(p)) for p in prompts)
    step = "fused step" if fused else "python step"
    print(f"# {args.checkpoint}: RWKV-{model.generation} L{c.n_layer}-d{c.n_embd}, vocab {c.vocab_size}, "
          f"{model.num_params() / 1e6:.1f}M parameters, {device.type} {args.dtype} ({step})"
          f"{', tuned state ' + args.state if args.state else ''}; prompt {lengths} tokens",
          file=sys.stderr, flush=True)
    # A tokenizer smaller than the model's (padded) vocabulary: ids it cannot decode are masked.
    vocab_limit = tok.vocab_size if tok.vocab_size < c.vocab_size else None
    if vocab_limit is not None:
        print(f"# the tokenizer has {tok.vocab_size} tokens, the model {c.vocab_size}: "
              f"ids >= {tok.vocab_size} are never sampled", file=sys.stderr, flush=True)
    single = len(prompts) == 1
    decode = tok.stream_decoder()
    times = []

    def show(new_ids):
        times.append(time.perf_counter())
        if single:  # one prompt: its text as it comes; a batch: each completion when done
            sys.stdout.write(decode(new_ids.tolist()))
            sys.stdout.flush()

    if single:
        sys.stdout.write(args.prompt[0])
        sys.stdout.flush()
    t0 = time.perf_counter()
    out = model.generate(torch.tensor(prompts[0]) if single else prompts, args.max_new_tokens,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                         stream=show, vocab_limit=vocab_limit, fused_step=fused)
    if single:
        sys.stdout.write("\n")
    else:
        for i, (text, ids, row) in enumerate(zip(args.prompt, prompts, out)):
            completion = tok.decode(row[len(ids):].tolist())
            sys.stdout.write(f"{'' if i == 0 else chr(10)}--- {i + 1} ---\n{text}{completion}\n")
    sys.stdout.flush()
    prompt_s = times[0] - t0
    gen_s = times[-1] - times[0]
    n_prompt = sum(len(p) for p in prompts)
    rate = f"{(len(times) - 1) * len(prompts) / gen_s:.1f} tokens/s" if len(times) > 1 and gen_s > 0 else "-"
    batch = "" if single else f" x {len(prompts)} prompts"
    print(f"# prompt: {n_prompt} tokens in {prompt_s:.3f} s ({n_prompt / prompt_s:.1f} tokens/s, first token "
          f"included); generation: {len(times)} tokens{batch}, {rate}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
