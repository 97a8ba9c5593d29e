"""Train an RWKV-4 or RWKV-7 language model from scratch, resume it, fine-tune any checkpoint, or
tune only an RWKV-7 model's initial state.

    python -m rwkv_wkv.train                                  # demo: built-in corpus, minutes on a CPU
    python -m rwkv_wkv.train --generation 7                   # the same with an RWKV-7
    python -m rwkv_wkv.train --init-from RWKV-x070-World-0.1B.pth --data chats.jsonl --state-tune
    python -m rwkv_wkv.train --data enwik8 --preset rwkv-lm --device cuda
    python -m rwkv_wkv.train --resume                         # continue exactly where it stopped
    python -m rwkv_wkv.train --init-from rwkv-4-169m-pile/ --data my_text/ --save-hf
    torchrun --nproc_per_node=8 -m rwkv_wkv.train --init-from RWKV-4-Pile-7B.pth \
        --tokenizer 20B_tokenizer.json --data my_text/ --fsdp --grad-checkpoint --device cuda

(examples/train_enwik8.py is this command.) Presets: demo (the default without --init-from),
seed, rwkv-lm (RWKV-LM's enwik8 L6-D512) and finetune (the default with --init-from); every
field can be overridden.

Model: --init-from any checkpoint the package loads, RWKV-4 or RWKV-7 (an RWKV-LM .pth, a
Hugging Face directory — its tokenizer.json is used unless --tokenizer says otherwise — or one
of this trainer's checkpoints); the generation and shape come from it (--ctx-len still applies).
Without it a new model (--generation 4 or 7, --n-layer, --n-embd, --head-size for RWKV-7).
--state-tune (RWKV-7, with --init-from): trains only the initial WKV state of every layer (the
op's state gradient makes it exact); the result is out-dir/state.pth, which generation loads
with --state (the model itself is unchanged and not rewritten).
Data (--data): omitted, Python's own documentation (pydoc_data.topics, offline); 'enwik8', the
literature's 90M/5M/5M byte split (data/enwik8 or .zip, downloaded with a checksum check if
missing); any single file, byte for byte, split 90/5/5. With --tokenizer TOKENIZER.json, or a
directory of .txt files, or a .jsonl with a "text" field: documents tokenized once (cached in
--cache-dir) and split 90/5/5 of the tokens. Validation and test are in bits per byte (bits per
character for byte data), over the whole test split, so runs with different tokenizers compare.

Scale: --grad-accum N (the update of an N-times batch), --grad-checkpoint (activation
checkpointing per block), torchrun (DDP), --fsdp (FSDP2: blocks and root sharded; on CUDA bf16
parameters, float32 reduction; a new model is built on the meta device and each rank fills its
shards). Every rank draws the same global batch from one seeded generator and takes its slice,
so N processes compute what one with the N-times batch would (up to float summation order).

Outputs in --out-dir: ckpt/ (every rank writes its shards, swapped in atomically; --resume
continues bit for bit), log.jsonl, loss.png, sample.txt, and at the end model.pth (RWKV-LM
format) and with --save-hf hf/ (with the tokenizer). Bad input: one 'error:' line, exit 2,
nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import checkpoint
from .data import sample_batch, unigram_entropy_bits
from .errors import ArgumentParser, UsageError, run_command
from .models import MODELS, from_checkpoint, new_model
from .tokenizer import WORLD_VOCAB, is_world_vocab, tokenizer_for
from .tokens import load_data
from .training import (
    all_reduce_sum,
    any_rank,
    apply_fsdp,
    cleanup,
    evaluate,
    local_bytes,
    lr_at,
    plot_log,
    setup_distributed,
)

PRESETS = {
    # small enough to finish in a few minutes on 2 CPU cores and visibly learn
    "demo": dict(n_layer=4, n_embd=128, ctx_len=128, batch_size=16, lr=2e-3, lr_final=2e-4, warmup_steps=50,
                 max_steps=1000, betas=(0.9, 0.99), eval_interval=250, eval_tokens=16384, ckpt_interval=250,
                 sample_len=300),
    # the seed tutorial's configuration
    "seed": dict(n_layer=12, n_embd=512, ctx_len=1024, batch_size=1, lr=1e-5, lr_final=1e-5, warmup_steps=0,
                 max_steps=100000, betas=(0.9, 0.999), eval_interval=1000, eval_tokens=1_000_000,
                 ckpt_interval=1000, sample_len=300),
    # RWKV-LM's enwik8 configuration (L6-D512)
    "rwkv-lm": dict(n_layer=6, n_embd=512, ctx_len=1024, batch_size=12, lr=8e-4, lr_final=1e-5, warmup_steps=0,
                    max_steps=100000, betas=(0.9, 0.99), eval_interval=1000, eval_tokens=1_000_000,
                    ckpt_interval=1000, sample_len=300),
    # fine-tuning a checkpoint (ctx_len None: the checkpoint's; n_layer / n_embd: for a new model)
    "finetune": dict(n_layer=4, n_embd=256, ctx_len=None, batch_size=4, lr=1e-4, lr_final=1e-5, warmup_steps=10,
                     max_steps=200, betas=(0.9, 0.99), eval_interval=50, eval_tokens=65536, ckpt_interval=50,
                     sample_len=0),
}


def parse_args(argv=None):
    p = ArgumentParser(__doc__, prog="python -m rwkv_wkv.train")
    p.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="base configuration (default: demo, or finetune with --init-from)")
    p.add_argument("--init-from", default=None, metavar="CKPT", help="checkpoint to start from (default: a new model)")
    p.add_argument(
        "--data", default=None, help="'enwik8', a file, a directory of .txt, a .jsonl; omit for the built-in corpus"
    )
    p.add_argument(
        "--tokenizer", default=None, help="'bytes' or a tokenizer.json (default: the checkpoint's own, else bytes)"
    )
    p.add_argument("--data-dir", default="data", help="where --data enwik8 looks and downloads (default: data/)")
    p.add_argument("--cache-dir", default="data/token_cache", help="where tokenized data is cached")
    p.add_argument("--out-dir", default="out/enwik8", help="checkpoints, logs, plot, sample (default: out/enwik8)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue from --out-dir/ckpt (or the given checkpoint directory)")
    p.add_argument("--generation", type=int, choices=(4, 7), default=None,
                   help="RWKV generation of a new model (default 4; --init-from: the checkpoint's)")
    p.add_argument("--state-tune", action="store_true",
                   help="RWKV-7 with --init-from: train only the initial WKV state (writes out-dir/state.pth)")
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--n-layer", type=int, help="a new model only")
    g.add_argument("--n-embd", type=int, help="a new model only")
    g.add_argument("--head-size", type=int, default=None,
                   help="a new RWKV-7 model only (default 64, or n_embd if smaller)")
    g.add_argument("--ctx-len", type=int, help="training window")
    g.add_argument("--batch-size", type=int, help="windows per micro-batch per process")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--lr-final", type=float, help="learning rate at max_steps (exponential decay after warmup)")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--betas", type=float, nargs=2)
    g.add_argument("--eval-interval", type=int, help="steps between validation runs")
    g.add_argument("--eval-tokens", "--eval-bytes", type=int, dest="eval_tokens",
                   help="validation tokens per periodic eval (an estimate; the test uses the whole split)")
    g.add_argument("--ckpt-interval", type=int, help="steps between checkpoints")
    g.add_argument("--sample-len", type=int, help="tokens to generate at the end (0 = none)")
    p.add_argument("--test-tokens", "--test-bytes", type=int, default=None, dest="test_tokens",
                   help="limit the final test to the first N tokens (labelled an estimate)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing per block")
    p.add_argument(
        "--fsdp", action="store_true", help="shard parameters, gradients and optimizer state (FSDP2; torchrun)"
    )
    p.add_argument("--save-hf", action="store_true", help="also write a Hugging Face directory (out-dir/hf)")
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument("--time-lr-mult", type=float, default=1.0, help="learning-rate multiplier for time_decay/time_first")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-autocast", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: exit as if killed
    a = p.parse_args(argv)
    a.preset = a.preset or ("finetune" if a.init_from else "demo")
    for key, value in PRESETS[a.preset].items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.betas = tuple(a.betas)
    check_args(a)
    return a


def check_args(a):
    """Every bad setting is an error before anything is read, loaded or written."""
    finite = all(math.isfinite(x) for x in (a.lr, a.lr_final, a.eps))
    checks = [
        (a.ctx_len is None or a.ctx_len >= 1, f"--ctx-len must be >= 1, got {a.ctx_len}"),
        (a.n_layer >= 1, f"--n-layer must be >= 1, got {a.n_layer}"),
        (a.n_embd >= 1, f"--n-embd must be >= 1, got {a.n_embd}"),
        (a.batch_size >= 1, f"--batch-size must be >= 1, got {a.batch_size}"),
        (a.grad_accum >= 1, f"--grad-accum must be >= 1, got {a.grad_accum}"),
        (a.lr > 0 and finite, f"--lr must be a positive number, got {a.lr}"),
        (a.lr_final > 0, f"--lr-final must be a positive number, got {a.lr_final}"),
        (a.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {a.warmup_steps}"),
        (a.max_steps >= 1, f"--max-steps must be >= 1, got {a.max_steps}"),
        (all(0 <= b < 1 for b in a.betas), f"--betas must be in [0, 1), got {a.betas}"),
        (a.eps > 0, f"--eps must be > 0, got {a.eps}"),
        (a.eval_interval >= 1 and a.ckpt_interval >= 1, "--eval-interval and --ckpt-interval must be >= 1"),
        (a.eval_tokens >= 1, f"--eval-tokens must be >= 1, got {a.eval_tokens}"),
        (a.test_tokens is None or a.test_tokens >= 1, f"--test-tokens must be >= 1, got {a.test_tokens}"),
        (a.sample_len >= 0, f"--sample-len must be >= 0, got {a.sample_len}"),
        (a.grad_clip >= 0, f"--grad-clip must be >= 0, got {a.grad_clip}"),
        (not (a.state_tune and a.save_hf),
         "--save-hf writes the model, which --state-tune leaves unchanged (it writes state.pth)"),
        (not a.state_tune or a.init_from is not None,
         "--state-tune tunes the initial state of a trained model: give it with --init-from"),
        (a.generation is None or a.init_from is None,
         "--generation is for a new model; --init-from's generation comes from the checkpoint"),
        (a.head_size is None or a.head_size >= 1, f"--head-size must be >= 1, got {a.head_size}"),
        (a.weight_decay >= 0, f"--weight-decay must be >= 0, got {a.weight_decay}"),
        (
            not a.fsdp or "RANK" in os.environ,
            "--fsdp shards over processes: run it under torchrun "
            "(torchrun --nproc_per_node=N -m rwkv_wkv.train ... --fsdp)",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)


def main(argv=None):
    """The command: its exit status (2 and one ``error:`` line for a user mistake)."""
    return run_command(train, argv)


def train(argv=None):
    """Trains as the command does and returns {"records", "test_bpb", "model" (rank 0), ...}.
    A user mistake is a UsageError, raised before anything is written."""
    a = parse_args(argv)
    rank, world, device = setup_distributed(a.device)
    try:
        return _train(a, rank, world, device)
    except UsageError as e:
        if rank > 0 and not e.local:
            e.quiet = True  # every rank hit the same mistake: rank 0 says it, once
        raise
    finally:
        cleanup(world)


def model_shape(a):
    """The fields of a new model's config beyond the common ones (RWKV-7: the head size)."""
    if (a.generation or 4) == 4:
        if a.head_size is not None:
            raise UsageError("--head-size is for RWKV-7 (--generation 7)")
        return {}
    head = a.head_size or min(64, a.n_embd)
    if a.n_embd % head:
        raise UsageError(f"--n-embd {a.n_embd} must be a multiple of --head-size {head} (RWKV-7)")
    return {"head_size": head}


def load_model(a):
    """(the model from --init-from on the CPU, or None for a new one; its tokenizer)."""
    if a.init_from is None:
        return None, tokenizer_for(a.tokenizer, None)
    try:
        model = from_checkpoint(a.init_from, ctx_len=a.ctx_len)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(f"--init-from: {e}") from e
    if a.state_tune:
        if model.generation != 7:
            raise UsageError(f"--state-tune: {a.init_from} is an RWKV-{model.generation} model; state tuning is for "
                             "RWKV-7 (its state is a matrix per head)")
        model.enable_state_tuning()
    return model, tokenizer_for(a.tokenizer, a.init_from, model.config.vocab_size)


def load_corpus(a, tokenizer, rank, world, device):
    """Rank 0 reads (and tokenizes, once, into the cache) first; the others then read the same
    files. A rank that fails says why; the others stop quietly."""
    corpus, error = None, None
    for turn in ((0,), tuple(range(1, world))):
        if rank in turn:
            try:
                corpus = load_data(a.data, tokenizer, a.data_dir, a.cache_dir, progress=rank == 0)
            except UsageError as e:
                error = e
        if any_rank(error is not None, device, world):
            if error is None:
                raise UsageError("another rank could not load the data", quiet=True)
            error.local = True
            raise error
    return corpus


def find_resume(a, out: Path):
    path = checkpoint.find(out / "ckpt" if a.resume == "auto" else Path(a.resume))
    try:
        return path, checkpoint.read_state(path)
    except FileNotFoundError as e:
        raise UsageError(f"--resume: {e}") from e
    except ValueError as e:
        raise UsageError(f"--resume: {e}; refusing to start fresh over it — move it away to start over") from e


def _train(a, rank, world, device):
    master = rank == 0
    say = (lambda *m: print(*m, flush=True)) if master else (lambda *m: None)
    out = Path(a.out_dir)

    # ---- everything that can be wrong is checked before anything is written ----
    model, tokenizer = load_model(a)
    resume_path, resume = find_resume(a, out) if a.resume else (None, None)
    corpus = load_corpus(a, tokenizer, rank, world, device)
    torch.manual_seed(a.seed)  # the same initial model on every rank, and in every run
    on_meta = model is None and a.fsdp  # FSDP from scratch: no rank ever holds the whole model
    if model is None:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = new_model(a.generation or 4, vocab_size=corpus.vocab_size, n_layer=a.n_layer,
                              n_embd=a.n_embd, ctx_len=a.ctx_len or 256, **model_shape(a))
    config = model.config
    ctx_len = config.ctx_len
    if len(corpus.train) < ctx_len + 2 or len(corpus.val) < 2:
        raise UsageError(f"{corpus.name}: its train split of {len(corpus.train):,} tokens is too small for "
                         f"--ctx-len {ctx_len}")
    expected = {"config": vars(config), "world": world, "micro": [a.batch_size, a.grad_accum]}
    if resume is not None:
        made = {k: resume.get(k) for k in expected}
        if made != expected:
            raise UsageError(f"--resume: {resume_path} was made by another run: {made} does not match this run's "
                             f"{expected}; pass the same settings or another --out-dir")
    if a.data is None:
        say("=" * 78 + "\nNo --data given: training on the BUILT-IN corpus (Python's pydoc topics), not enwik8.\n"
            "Use --data enwik8 for the real benchmark.\n" + "=" * 78)
    entropy = f"; unigram entropy of val: {unigram_entropy_bits(corpus.val.tokens):.3f} bits/byte" \
        if corpus.tokenizer == "bytes" and corpus.val.nbytes is None else ""
    say(corpus.describe() + entropy)

    # ---- the model, where it trains ----
    model.grad_checkpoint = a.grad_checkpoint
    model = (model if on_meta else model.to(device)).train()
    if a.fsdp:
        train_model = apply_fsdp(model, device)
        if on_meta:  # shard first, then each rank fills only its shards (RWKV.reset_parameters)
            model.to_empty(device=device)
            torch.manual_seed(a.seed)  # the values a normal construction would have
            model.reset_parameters()
    elif world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    optimizer = model.configure_optimizers(a.lr, a.weight_decay, a.betas, a.eps, a.time_lr_mult)
    data_gen = torch.Generator().manual_seed(a.seed)  # identical on every rank: one global batch
    step, records = 0, []
    if resume is not None:
        try:
            checkpoint.load(resume_path, train_model, optimizer)
        except ValueError as e:
            raise UsageError(f"--resume: {e}") from e
        data_gen.set_state(resume["data_rng"])
        torch.set_rng_state(resume["torch_rng"])
        step, records = resume["step"], list(resume["log"])
        say(f"resumed from {resume_path} at step {step}")
    # DDP: the gradients are all-reduced once, after the last micro-batch
    no_sync = train_model.no_sync if isinstance(train_model, torch.nn.parallel.DistributedDataParallel) else None
    if a.compile:  # after DDP / FSDP, as torch recommends
        train_model = torch.compile(train_model)
    autocast = contextlib.nullcontext
    if device.type == "cuda" and not a.no_autocast and not a.fsdp:  # FSDP: its bf16 policy
        autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tuned = f" (state tuning: {trainable:,} trainable)" if a.state_tune else ""
    say(f"model: RWKV-{model.generation}, {model.num_params() / 1e6:.2f}M parameters{tuned}, "
        f"L{config.n_layer}-d{config.n_embd}, vocab {config.vocab_size}, ctx {ctx_len}; {world} process(es)"
        f"{' (FSDP2)' if a.fsdp else ''} x batch "
        f"{a.batch_size} x accum {a.grad_accum} on {device}")
    if master:
        out.mkdir(parents=True, exist_ok=True)
        # the log restarts from what the checkpoint knows (a killed run may have logged past it)
        with open(out / "log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def log(rec):
        records.append(rec)
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    def validate(max_tokens):
        return evaluate(model, corpus.val, ctx_len, 2 * a.batch_size, device, rank, world, max_tokens, autocast)

    if step == 0:  # where training starts from (for a checkpoint: what fine-tuning improves on)
        bpb, nbytes = validate(a.eval_tokens)
        log({"step": 0, "tokens": 0, "val_bpb": bpb, "val_bytes": nbytes})
        say(f"step 0: val {bpb:.4f} bits per byte (first {nbytes:,} bytes)")

    # ---- the loop ----
    tokens_per_step = a.batch_size * a.grad_accum * ctx_len * world
    bar = tqdm(total=a.max_steps, initial=step, desc="train", disable=not master, dynamic_ncols=True)
    t_last, tok_last = time.time(), 0
    while step < a.max_steps:
        lr = lr_at(step, a)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        # the step's whole global batch in one draw; micro-batch m of rank r is its slice m * world + r
        xs, ys = sample_batch(corpus.train, a.batch_size * world * a.grad_accum, ctx_len, data_gen)
        for micro in range(a.grad_accum):
            sl = slice((micro * world + rank) * a.batch_size, (micro * world + rank + 1) * a.batch_size)
            x, y = xs[sl].to(device), ys[sl].to(device)
            last = micro == a.grad_accum - 1
            if a.fsdp:  # reduce-scatter the gradients once, after the last micro-batch
                model.set_requires_gradient_sync(last)
            with contextlib.nullcontext() if last or no_sync is None else no_sync(), autocast():
                _, loss = train_model(x, y)
                (loss / a.grad_accum).backward()
            loss_sum += loss.item() / a.grad_accum
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        step += 1
        (loss_all,) = all_reduce_sum([loss_sum], device, world)
        rec = {"step": step, "tokens": step * tokens_per_step, "train_loss": loss_all / world, "lr": lr}
        if step == 1:
            rec["memory_bytes"] = local_bytes(model, optimizer)
        if step % a.eval_interval == 0 or step == a.max_steps:
            rec["val_bpb"], rec["val_bytes"] = validate(a.eval_tokens)
            say(f"\nstep {step}: val {rec['val_bpb']:.4f} bits per byte (first {rec['val_bytes']:,} bytes of "
                f"validation: an estimate)")
        log(rec)
        now = time.time()
        tok_last += tokens_per_step
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", lr=f"{lr:.2e}",
                        tok_s=f"{tok_last / max(now - t_last, 1e-9):,.0f}")
        bar.update()
        if now - t_last > 5:
            t_last, tok_last = now, 0
        if step % a.ckpt_interval == 0 or step == a.max_steps:
            state = {"step": step, **expected, "args": _plain(vars(a)), "data_rng": data_gen.get_state(),
                     "torch_rng": torch.get_rng_state(), "log": records}
            checkpoint.save(out / "ckpt", train_model, optimizer, state, rank, world)
        if a.stop_after is not None and step >= a.stop_after:
            bar.close()
            say(f"stopping after step {step} (--stop-after)")
            return {"records": records}
    bar.close()
    return finish(a, model, train_model, corpus, tokenizer, config, records, step, autocast, rank, world, device, say)


def finish(a, model, train_model, corpus, tokenizer, config, records, step, autocast, rank, world, device, say):
    """The whole-split test, then on rank 0: model.pth (and hf/), a sample, the plot."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    out = Path(a.out_dir)
    test_bpb, test_bytes = evaluate(model, corpus.test, config.ctx_len, 2 * a.batch_size, device, rank, world,
                                    a.test_tokens, autocast)
    label = "" if a.test_tokens is None else " (the first tokens only: an estimate)"
    say(f"test: {test_bpb:.4f} bits per byte over {test_bytes:,} bytes{label}")
    # the whole model, gathered from its shards (a collective: every rank takes part)
    full = get_model_state_dict(train_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    result = {"records": records, "test_bpb": test_bpb}
    if rank != 0:
        return result
    final = MODELS[model.generation](config)  # (not type(model): FSDP2 swaps in a class of its own)
    if a.state_tune:
        final.enable_state_tuning()
    final.load_state_dict(full)
    result["model"] = final
    if a.state_tune:  # the model is what --init-from holds; what was trained is the state
        final.save_tuned_state(out / "state.pth")
        written = "ckpt/, log.jsonl, loss.png, state.pth"
    else:
        final.save_rwkv_lm(out / "model.pth")
        written = "ckpt/, log.jsonl, loss.png, model.pth"
    if a.save_hf and not a.state_tune:
        final.save_hf(out / "hf")
        if corpus.tokenizer != "bytes":  # a tokenizer.json, or a World vocabulary under its own name
            name = "tokenizer.json" if not is_world_vocab(corpus.tokenizer) else WORLD_VOCAB
            shutil.copyfile(corpus.tokenizer, out / "hf" / name)
        written += ", hf/"
    if a.sample_len:
        result["sample"] = write_sample(a, model if not a.fsdp else final, corpus, tokenizer, say)
        written += ", sample.txt"
    what = "state tuning" if a.state_tune else "training"
    plot_log(records, out / "loss.png", f"RWKV-{model.generation} {what} ({corpus.name})")
    log = {"step": step, "test_bpb": test_bpb, "test_bytes": test_bytes}
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(log) + "\n")
    say(f"wrote {out}/: {written}")
    return result


def write_sample(a, model, corpus, tokenizer, say):
    """A continuation of 64 tokens of the test split (for bytes: from its first paragraph break)."""
    test = corpus.test.tokens
    start = 0
    if corpus.tokenizer == "bytes":
        head = bytes(test[: min(len(test), 65536)])
        start = head.find(b"\n\n") + 2 if b"\n\n" in head[:-64] else 0
    prompt_ids = [int(t) for t in test[start:start + 64]]
    model.eval()
    device = next(model.parameters()).device
    ids = model.generate(torch.tensor(prompt_ids, device=device), a.sample_len, temperature=0.8, top_p=0.9,
                         seed=a.seed, vocab_limit=min(tokenizer.vocab_size, model.config.vocab_size))
    prompt, text = tokenizer.decode(prompt_ids), tokenizer.decode(ids[len(prompt_ids):].tolist())
    (Path(a.out_dir) / "sample.txt").write_text(f"PROMPT:\n{prompt}\n\nSAMPLE:\n{text}\n", encoding="utf-8")
    say(f"\n--- sample (prompt: {prompt[:40]!r}...) ---\n{text}\n---")
    return text


def _plain(d):
    """The arguments as a checkpoint can hold them (weights_only: no tuples of paths etc.)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

if __name__ == "__main__":
    sys.exit(main())
