"""Fine-tune any RWKV-4 checkpoint on your own text, on one device or sharded over many (FSDP2).

    python examples/finetune.py --init-from path/to/rwkv-4-169m-pile --data my_text/ --max-steps 500
    python examples/finetune.py --init-from RWKV-4-Pile-169M.pth --tokenizer 20B_tokenizer.json --data docs.jsonl
    torchrun --standalone --nproc_per_node=8 examples/finetune.py --init-from RWKV-4-Pile-7B.pth \
        --tokenizer 20B_tokenizer.json --data my_text/ --fsdp --grad-checkpoint --device cuda --save-hf
    python examples/finetune.py --data my_text/ --resume        # continue exactly where it stopped

--init-from: a Hugging Face RWKV directory (its tokenizer.json is used unless --tokenizer says
otherwise), an RWKV-LM .pth, or a checkpoint of our trainers; the model's shape comes from it,
--ctx-len still applies. Without it a model is trained from scratch (--n-layer, --n-embd).
--data: a text file, a directory of .txt files, or a .jsonl with a "text" field; tokenized once
(cached in --cache-dir, rwkv_wkv/tokens.py) and split 90/5/5. Validation and test are reported
in bits per byte, so runs with different tokenizers compare.

Scale: --grad-accum N (N micro-batches per optimizer step: the update of an N-times batch),
--grad-checkpoint (activation checkpointing per block: same gradients, less memory), and --fsdp
(FSDP2 under torchrun: every block and the root sharded with fully_shard; on CUDA bf16 parameters
with float32 gradient reduction; gloo on CPU). Without --fsdp, torchrun gives DDP. Every rank
draws the same global batch from one seeded generator and takes its slice, so N processes compute
what one process with the N-times batch would (up to the order of floating-point sums).

Outputs in --out-dir: ckpt/ (torch.distributed.checkpoint: each rank writes its shards, so a
sharded model is never gathered to save; with trainer_state.pt for the step, random state and log;
swapped in atomically), log.jsonl, and at the end model.pth (RWKV-LM format) and, with --save-hf,
hf/ (a Hugging Face directory with the tokenizer), written by rank 0.
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
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_state_dict)
from tqdm import tqdm

from rwkv_wkv import RWKV, RWKVConfig
from rwkv_wkv.data import DataError, sample_batch
from rwkv_wkv.tokens import get_tokenizer, load_token_corpus
from rwkv_wkv.training import all_reduce_sum, cleanup, lr_at, setup_distributed


# one process saves and loads its checkpoint with torch.distributed.checkpoint too: that is intended
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


class UsageError(Exception):
    """A bad setting or input: one line on stderr, exit status 2, nothing written. ``quiet``:
    exit 2 without a line (a rank stopping because another one reported the cause)."""

    def __init__(self, message, quiet=False):
        super().__init__(message)
        self.quiet = quiet


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        raise UsageError(message)


def parse_args(argv=None):
    p = _Parser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--init-from", default=None, metavar="CKPT", help="checkpoint to start from (default: a new model)")
    p.add_argument("--data", required=True, help="a text file, a directory of .txt files, or a .jsonl with 'text'")
    p.add_argument("--tokenizer", default=None, help="'bytes' or a tokenizer.json (default: the HF checkpoint's own, else bytes)")
    p.add_argument("--cache-dir", default="data/token_cache", help="where tokenized data is cached")
    p.add_argument("--out-dir", default="out/finetune")
    p.add_argument("--resume", action="store_true", help="continue from --out-dir/ckpt")
    p.add_argument("--n-layer", type=int, default=4, help="from scratch only")
    p.add_argument("--n-embd", type=int, default=256, help="from scratch only")
    p.add_argument("--ctx-len", type=int, default=None, help="training window (default: the checkpoint's, else 256)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lr-final", type=float, default=1e-5)
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99))
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens per periodic eval")
    p.add_argument("--ckpt-interval", type=int, default=50)
    p.add_argument("--grad-checkpoint", action="store_true", help="activation checkpointing per block")
    p.add_argument("--fsdp", action="store_true", help="shard parameters, gradients and optimizer state (FSDP2; torchrun)")
    p.add_argument("--save-hf", action="store_true", help="also write a Hugging Face directory (out-dir/hf)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-autocast", action="store_true", help="no bf16 autocast on CUDA (DDP / one device)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: exit early, as if killed
    a = p.parse_args(argv)
    checks = [
        (a.batch_size >= 1, f"--batch-size must be >= 1, got {a.batch_size}"),
        (a.grad_accum >= 1, f"--grad-accum must be >= 1, got {a.grad_accum}"),
        (a.ctx_len is None or a.ctx_len >= 1, f"--ctx-len must be >= 1, got {a.ctx_len}"),
        (a.lr > 0 and a.lr_final > 0, "--lr and --lr-final must be > 0"),
        (a.max_steps >= 1 and a.warmup_steps >= 0, "--max-steps must be >= 1 and --warmup-steps >= 0"),
        (a.eval_interval >= 1 and a.ckpt_interval >= 1 and a.eval_tokens >= 1, "intervals and --eval-tokens must be >= 1"),
        (all(0 <= b < 1 for b in a.betas) and a.eps > 0, "--betas must be in [0, 1) and --eps > 0"),
        (a.fsdp is False or "RANK" in os.environ, "--fsdp shards over processes: run it under torchrun "
                                                  "(torchrun --nproc_per_node=N examples/finetune.py ... --fsdp)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise UsageError(msg)
    return a


def barrier(world):
    if world > 1:
        dist.barrier()


def load_model(a):
    """(model on the CPU, the tokenizer spec) from --init-from or from scratch."""
    if a.init_from is None:
        return None, a.tokenizer or "bytes"
    try:
        model = RWKV.from_checkpoint(a.init_from, ctx_len=a.ctx_len)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise UsageError(f"--init-from: {e}") from e
    tokenizer = a.tokenizer
    own = os.path.join(a.init_from, "tokenizer.json")
    if tokenizer is None:
        tokenizer = own if os.path.isdir(a.init_from) and os.path.isfile(own) else "bytes"
    return model, tokenizer


def apply_fsdp(model, device):
    """FSDP2: each block, then the root (embedding, final LayerNorm, head). On CUDA parameters are
    gathered in bf16 and gradients reduced in float32; on CPU everything stays float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" \
        else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def local_bytes(model, optimizer):
    """Bytes this rank holds of parameters, gradients and optimizer state (its shards under FSDP)."""
    def size(t):
        t = t.to_local() if hasattr(t, "to_local") else t
        return t.numel() * t.element_size()

    params = sum(size(p) for p in model.parameters())
    grads = sum(size(p.grad) for p in model.parameters() if p.grad is not None)
    optim = sum(size(v) for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.dim() > 0)
    return {"params": params, "grads": grads, "optimizer": optim}


# ---- checkpoints (torch.distributed.checkpoint) -------------------------------------------------
def save_checkpoint(out: Path, model, optimizer, trainer_state, rank, world):
    """Every rank writes its shards into ckpt.tmp/, rank 0 the trainer state; then rank 0 swaps it
    in for ckpt/ (a kill at any moment leaves the previous checkpoint whole)."""
    tmp, final, old = out / "ckpt.tmp", out / "ckpt", out / "ckpt.old"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
    if rank == 0:
        torch.save(trainer_state, tmp / "trainer_state.pt")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    barrier(world)


def load_checkpoint(out: Path, model, optimizer, expected: dict):
    """The trainer state of out/ckpt, after loading its shards into `model` (what training calls:
    FSDP / DDP / plain) and `optimizer`; refused unless it was made by a run like this one."""
    path = out / "ckpt"
    if not (path / "trainer_state.pt").exists():
        raise UsageError(f"--resume: no checkpoint in {path}")
    try:
        st = torch.load(path / "trainer_state.pt", weights_only=True)
    except Exception as e:
        raise UsageError(f"--resume: {path / 'trainer_state.pt'} is unreadable ({type(e).__name__})") from e
    if any(st.get(k) != v for k, v in expected.items()):
        raise UsageError(f"--resume: {path} was made with another model, world size or batch "
                         f"({ {k: st.get(k) for k in expected} })")
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as e:
        raise UsageError(f"--resume: the shards in {path} are unreadable ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    return st


# ---- evaluation ---------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, split, a, ctx_len, device, rank, world, max_tokens=None, autocast=contextlib.nullcontext):
    """Bits per byte over the non-overlapping full windows of the split (or its first
    max_tokens): summed nats / UTF-8 bytes of the predicted tokens / ln 2. Every rank runs the
    same number of batches (FSDP's collectives need that); padding windows weigh nothing."""
    model.eval()
    n = len(split) - 1 if max_tokens is None else min(len(split) - 1, max_tokens)
    starts = list(range(0, n - ctx_len + 1, ctx_len)) or [0]
    mine = starts[rank::world]
    per_rank = -(-len(starts) // world)
    weights = [1.0] * len(mine) + [0.0] * (per_rank - len(mine))
    mine = mine + [starts[0]] * (per_rank - len(mine))
    nats = nbytes = 0.0
    for i in range(0, per_rank, a.batch_size):
        chunk = mine[i:i + a.batch_size]
        w = torch.tensor(weights[i:i + a.batch_size], dtype=torch.float64)
        span = min(ctx_len, len(split) - 1)
        win = torch.stack([torch.from_numpy(split[s:s + span + 1].astype("int64")) for s in chunk])
        x, y = win[:, :-1].to(device), win[:, 1:].to(device)
        with autocast():
            logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1),
                                                 reduction="none").view(len(chunk), -1).sum(1).double().cpu()
        nats += float((loss * w).sum())
        nbytes += float(sum(wt * split.bytes_of(s + 1, s + 1 + span) for s, wt in zip(chunk, w.tolist())))
    nats, nbytes = all_reduce_sum([nats, nbytes], device, world)
    model.train()
    return nats / max(nbytes, 1.0) / math.log(2), int(nbytes)


# ---- main ---------------------------------------------------------------------------------------
def main(argv=None):
    a = parse_args(argv)
    rank, world, device = setup_distributed(a)
    master = rank == 0
    say = (lambda *m: print(*m, flush=True)) if master else (lambda *m: None)
    out = Path(a.out_dir)
    try:
        return train(a, rank, world, device, master, say, out)
    finally:
        cleanup(world)


def train(a, rank, world, device, master, say, out):
    model, tokenizer = load_model(a)
    try:
        tokenizer = get_tokenizer(tokenizer)
    except DataError as e:
        raise UsageError(str(e)) from e
    if model is not None and tokenizer.vocab_size > model.config.vocab_size:  # before any tokenizing
        raise UsageError(f"the tokenizer ({tokenizer.name}) has {tokenizer.vocab_size} tokens but the model only "
                         f"{model.config.vocab_size}: they do not belong together")
    # rank 0 tokenizes (once, cached); the others wait, then memory-map the same file
    corpus, error = None, None
    for turn in ((0,), tuple(range(1, world))):
        if rank in turn:
            try:
                corpus = load_token_corpus(a.data, tokenizer, a.cache_dir, progress=master)
            except DataError as e:
                error = str(e)
        if world > 1:
            flag = torch.tensor([error is not None], dtype=torch.int32)
            dist.all_reduce(flag)
            if flag.item() and error is None:  # the rank that failed prints why
                raise UsageError("another rank could not load the data", quiet=True)
        if error:
            raise UsageError(error)
    torch.manual_seed(a.seed)  # the same initial model on every rank, and in every run
    on_meta = model is None and a.fsdp  # FSDP from scratch: no rank ever holds the whole model
    if model is None:
        with torch.device("meta") if on_meta else contextlib.nullcontext():
            model = RWKV(RWKVConfig(vocab_size=corpus.vocab_size, n_layer=a.n_layer, n_embd=a.n_embd, ctx_len=a.ctx_len or 256))
    config = model.config
    ctx_len = config.ctx_len
    if len(corpus.train) < ctx_len + 2 or len(corpus.val) < 2:
        raise UsageError(f"{a.data}: {len(corpus.train)} training tokens is too few for --ctx-len {ctx_len}")
    say(corpus.describe())

    model.grad_checkpoint = a.grad_checkpoint
    model = (model if on_meta else model.to(device)).train()
    if a.fsdp:
        train_model = apply_fsdp(model, device)
        if on_meta:  # shard first, then each rank fills only its shards (RWKV.reset_parameters)
            model.to_empty(device=device)
            torch.manual_seed(a.seed)  # the values a normal construction would have
            model.reset_parameters()
    elif world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    else:
        train_model = model
    optimizer = model.configure_optimizers(a.lr, a.weight_decay, tuple(a.betas), a.eps)
    use_autocast = device.type == "cuda" and not a.no_autocast and not a.fsdp  # FSDP: its bf16 policy
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_autocast else contextlib.nullcontext
    data_gen = torch.Generator().manual_seed(a.seed)  # identical on every rank: one global batch
    step, records = 0, []
    if a.resume:
        st = load_checkpoint(out, train_model, optimizer,
                             {"config": vars(config), "world": world, "micro": (a.batch_size, a.grad_accum)})
        data_gen.set_state(st["data_rng"])
        torch.set_rng_state(st["torch_rng"])
        step, records = st["step"], list(st["log"])
        say(f"resumed from {out / 'ckpt'} at step {step}")
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, L{config.n_layer}-d{config.n_embd}, vocab "
        f"{config.vocab_size}, ctx {ctx_len}; {world} process(es){' (FSDP2)' if a.fsdp else ''} x batch "
        f"{a.batch_size} x accum {a.grad_accum} on {device}")
    if master:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)

    def trainer_state():
        return {"step": step, "config": vars(config), "world": world, "micro": (a.batch_size, a.grad_accum),
                "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(), "log": records}

    if step == 0:  # where training starts from (for a pretrained model: what fine-tuning improves on)
        bpb, nbytes = evaluate(model, corpus.val, a, ctx_len, device, rank, world, a.eval_tokens, autocast)
        records.append({"step": 0, "tokens": 0, "val_bpb": bpb, "val_bytes": nbytes})
        say(f"step 0: val {bpb:.4f} bits per byte (first {nbytes:,} bytes)")
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(records[-1]) + "\n")
    tokens_per_step = a.batch_size * a.grad_accum * ctx_len * world
    bar = tqdm(total=a.max_steps, initial=step, desc="train", disable=not master, dynamic_ncols=True)
    t0 = time.time()
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
                train_model.set_requires_gradient_sync(last)
            sync = contextlib.nullcontext() if last or not isinstance(train_model, torch.nn.parallel.DistributedDataParallel) \
                else train_model.no_sync()
            with sync, autocast():
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
            rec["val_bpb"], rec["val_bytes"] = evaluate(model, corpus.val, a, ctx_len, device, rank, world, a.eval_tokens, autocast)
            say(f"\nstep {step}: val {rec['val_bpb']:.4f} bits per byte (first {rec['val_bytes']:,} bytes)")
        records.append(rec)
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", lr=f"{lr:.2e}",
                        tok_s=f"{(step * tokens_per_step) / max(time.time() - t0, 1e-9):,.0f}")
        bar.update()
        if step % a.ckpt_interval == 0 or step == a.max_steps:
            save_checkpoint(out, train_model, optimizer, trainer_state(), rank, world)
        if a.stop_after is not None and step >= a.stop_after:
            bar.close()
            say(f"stopping after step {step} (--stop-after)")
            return {"records": records}
    bar.close()

    test_bpb, test_bytes = evaluate(model, corpus.test, a, ctx_len, device, rank, world, None, autocast)
    say(f"test: {test_bpb:.4f} bits per byte over {test_bytes:,} bytes")
    # the whole model, gathered from its shards (a collective: every rank takes part)
    full = get_model_state_dict(train_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    result = {"records": records, "test_bpb": test_bpb}
    if master:
        final = RWKV(config)
        final.load_state_dict(full)
        final.save_rwkv_lm(out / "model.pth")
        written = "ckpt/, log.jsonl, model.pth"
        if a.save_hf:
            final.save_hf(out / "hf")
            if corpus.tokenizer != "bytes":
                shutil.copyfile(corpus.tokenizer, out / "hf" / "tokenizer.json")
            written += ", hf/"
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "test_bpb": test_bpb, "test_bytes": test_bytes}) + "\n")
        say(f"wrote {out}/: {written}")
        result["model"] = final
    return result


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
