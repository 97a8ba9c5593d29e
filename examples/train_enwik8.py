"""Train an RWKV-4 byte-level language model on enwik8 and report bits per character.

    python examples/train_enwik8.py                          # demo: built-in corpus, a few minutes on CPU
    python examples/train_enwik8.py --data enwik8 --preset rwkv-lm --device cuda
    python examples/train_enwik8.py --data path/to/any.file --max-steps 2000
    python examples/train_enwik8.py --resume                 # continue exactly where it stopped
    torchrun --standalone --nproc_per_node=2 examples/train_enwik8.py --data enwik8 --device cuda
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \
        --rdzv_endpoint=HOST:29500 examples/train_enwik8.py --data enwik8 --device cuda

Data: `--data enwik8` uses data/enwik8 (or data/enwik8.zip), downloading enwik8.zip with a
checksum check if neither is there; the split is the literature's 90M/5M/5M bytes. Without
--data it trains on Python's own documentation (pydoc_data.topics), split 90/5/5.

Under torchrun every rank draws the same global batch of batch_size * world_size windows from
one seeded generator and takes its own slice, so N processes compute exactly what one process
with an N-times larger batch would (up to the order of floating-point sums). Rank 0 logs and
writes checkpoints; evaluation sums nats and bytes over ranks before dividing.

Outputs in --out-dir: ckpt.pt (atomic; loadable with torch.load(weights_only=True)),
log.jsonl, loss.png (train/val BPC vs tokens), sample.txt, and model.pth (RWKV-LM format).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rwkv_wkv import RWKV, RWKVConfig
from rwkv_wkv.data import (DataError, bits_per_byte, eval_windows, load_corpus, sample_batch,
                           unigram_entropy_bits)
from rwkv_wkv.model import decode_bytes
from rwkv_wkv.training import all_reduce_sum, cleanup, lr_at, setup_distributed

PRESETS = {
    # small enough to finish in a few minutes on 2 CPU cores and visibly learn
    "demo": dict(n_layer=4, n_embd=128, ctx_len=128, batch_size=16, lr=2e-3, lr_final=2e-4,
                 warmup_steps=50, max_steps=1000, betas=(0.9, 0.99), eps=1e-8, eval_interval=250,
                 eval_bytes=16384, ckpt_interval=250),
    # the seed tutorial's configuration
    "seed": dict(n_layer=12, n_embd=512, ctx_len=1024, batch_size=1, lr=1e-5, lr_final=1e-5,
                 warmup_steps=0, max_steps=100000, betas=(0.9, 0.999), eps=1e-8, eval_interval=1000,
                 eval_bytes=1_000_000, ckpt_interval=1000),
    # RWKV-LM's enwik8 configuration (L6-D512)
    "rwkv-lm": dict(n_layer=6, n_embd=512, ctx_len=1024, batch_size=12, lr=8e-4, lr_final=1e-5,
                    warmup_steps=0, max_steps=100000, betas=(0.9, 0.99), eps=1e-8, eval_interval=1000,
                    eval_bytes=1_000_000, ckpt_interval=1000),
}
CKPT_FORMAT = 1


class CheckpointError(RuntimeError):
    pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--preset", choices=list(PRESETS), default="demo", help="base configuration (default: demo)")
    p.add_argument("--data", default=None, help="'enwik8', a path to any file (or .zip), or omit for the built-in corpus")
    p.add_argument("--data-dir", default="data", help="where --data enwik8 looks and downloads (default: data/)")
    p.add_argument("--out-dir", default="out/enwik8", help="checkpoints, logs, plot, sample (default: out/enwik8)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from --out-dir/ckpt.pt (or the given checkpoint path)")
    g = p.add_argument_group("overrides of the preset")
    g.add_argument("--n-layer", type=int)
    g.add_argument("--n-embd", type=int)
    g.add_argument("--ctx-len", type=int)
    g.add_argument("--batch-size", type=int, help="windows per step per process")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--lr-final", type=float, help="learning rate at max_steps (exponential decay after warmup)")
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--max-steps", type=int)
    g.add_argument("--betas", type=float, nargs=2)
    g.add_argument("--eps", type=float)
    g.add_argument("--eval-interval", type=int, help="steps between validation runs")
    g.add_argument("--eval-bytes", type=int, help="bytes of validation data per periodic eval (an estimate; the final test uses the whole split unless --test-bytes)")
    g.add_argument("--ckpt-interval", type=int, help="steps between checkpoints")
    p.add_argument("--test-bytes", type=int, default=None, help="limit the final test evaluation to the first N bytes (labelled an estimate)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0, help="max grad norm (0 = off)")
    p.add_argument("--time-lr-mult", type=float, default=1.0, help="learning-rate multiplier for time_decay/time_first")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-autocast", action="store_true", help="train in float32 on CUDA (default: bf16 autocast)")
    p.add_argument("--sample-len", type=int, default=300, help="bytes to generate at the end")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: exit early, as if killed
    args = p.parse_args(argv)
    cfg = dict(PRESETS[args.preset])
    for key in list(cfg):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = tuple(value) if key == "betas" else value
    for key, value in cfg.items():
        setattr(args, key, value)
    validate_args(args)
    return args


def validate_args(a):
    """Every bad setting is an error before any data is read or any step is taken."""
    checks = [
        (a.ctx_len >= 1, f"--ctx-len must be >= 1, got {a.ctx_len}"),
        (a.n_layer >= 1, f"--n-layer must be >= 1, got {a.n_layer}"),
        (a.n_embd >= 1, f"--n-embd must be >= 1, got {a.n_embd}"),
        (a.batch_size >= 1, f"--batch-size must be >= 1, got {a.batch_size}"),
        (a.lr > 0 and math.isfinite(a.lr), f"--lr must be a positive number, got {a.lr}"),
        (a.lr_final > 0 and math.isfinite(a.lr_final), f"--lr-final must be a positive number, got {a.lr_final}"),
        (a.warmup_steps >= 0, f"--warmup-steps must be >= 0, got {a.warmup_steps}"),
        (a.max_steps >= 1, f"--max-steps must be >= 1, got {a.max_steps}"),
        (all(0 <= b < 1 for b in a.betas), f"--betas must be in [0, 1), got {a.betas}"),
        (a.eps > 0, f"--eps must be > 0, got {a.eps}"),
        (a.eval_interval >= 1 and a.ckpt_interval >= 1, "--eval-interval and --ckpt-interval must be >= 1"),
        (a.eval_bytes >= 1, f"--eval-bytes must be >= 1, got {a.eval_bytes}"),
        (a.grad_clip >= 0, f"--grad-clip must be >= 0, got {a.grad_clip}"),
        (a.weight_decay >= 0, f"--weight-decay must be >= 0, got {a.weight_decay}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise SystemExit(f"error: {msg}")


# ---- checkpoints -----------------------------------------------------------------------------
def save_checkpoint(path: Path, state: dict):
    """Atomic: write a temp file in the same directory, fsync, rename over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        # fault injection for tests/test_reliability.py: signal, then stall mid-write so the test
        # can SIGKILL the process with the temp file written but not yet renamed
        if marker := os.environ.get("RWKV_WKV_TEST_STALL_IN_CHECKPOINT"):
            Path(marker).touch()
            time.sleep(600)
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path} to resume from")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, bad pickle, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e}); "
                              f"refusing to start fresh over it — move it away to start over") from e
    if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT or "model" not in ck:
        raise CheckpointError(f"checkpoint {path} is not a train_enwik8.py checkpoint (format {CKPT_FORMAT})")
    return ck


# ---- evaluation ------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, split, a, device, rank, world, max_bytes=None, autocast=contextlib.nullcontext):
    """Bits per byte over non-overlapping windows of the split (or its first max_bytes)."""
    model.eval()
    nats, count = 0.0, 0
    batch_x, batch_y = [], []

    def flush():
        nonlocal nats, count
        x, y = torch.stack(batch_x).to(device), torch.stack(batch_y).to(device)
        with autocast():
            logits, _ = model(x)
        nats += torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), reduction="sum").item()
        count += y.numel()
        batch_x.clear()
        batch_y.clear()

    for i, (x, y) in enumerate(eval_windows(split, a.ctx_len, max_bytes)):
        if i % world != rank:
            continue
        if batch_x and len(x) != len(batch_x[0]):
            flush()
        batch_x.append(x)
        batch_y.append(y)
        if len(batch_x) == max(1, a.batch_size * 2):
            flush()
    if batch_x:
        flush()
    nats, count = all_reduce_sum([nats, count], device, world)
    model.train()
    return bits_per_byte(nats, int(count)), int(count)


def plot_log(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tr = [(r["tokens"], r["train_bpc"]) for r in records if "train_bpc" in r]
    va = [(r["tokens"], r["val_bpc"]) for r in records if "val_bpc" in r]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if tr:
        ax.plot(*zip(*tr), label="train (batch)", alpha=0.6)
    if va:
        ax.plot(*zip(*va), "o-", label="validation")
    ax.set_xlabel("tokens (bytes) seen")
    ax.set_ylabel("bits per character")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("RWKV-4 byte-level training")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------------------
def main(argv=None):
    a = parse_args(argv)
    rank, world, device = setup_distributed(a)
    master = rank == 0
    say = (lambda *m: print(*m, flush=True)) if master else (lambda *m: None)
    out = Path(a.out_dir)
    ckpt_path = out / "ckpt.pt"

    # Everything that can be wrong is checked before training starts.
    resume = None
    if a.resume:
        resume = load_checkpoint(Path(a.resume) if a.resume != "auto" else ckpt_path)
    try:
        corpus = load_corpus(a.data, a.data_dir)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if len(corpus.train) < a.ctx_len + 2 or len(corpus.val) < 2:
        raise SystemExit(f"error: {corpus.name} is too small for ctx_len {a.ctx_len} "
                         f"(train split {len(corpus.train)} bytes)")
    if a.data is None:
        say("=" * 78 + "\nNo --data given: training on the BUILT-IN corpus (Python's pydoc topics), not enwik8.\n"
            "Use --data enwik8 for the real benchmark.\n" + "=" * 78)
    say(corpus.describe() + f"; unigram entropy of val: {unigram_entropy_bits(corpus.val):.3f} bits/byte")

    config = RWKVConfig(vocab_size=256, n_layer=a.n_layer, n_embd=a.n_embd, ctx_len=a.ctx_len)
    if resume is not None and resume["config"] != vars(config):
        raise SystemExit(f"error: checkpoint config {resume['config']} does not match this run's {vars(config)}; "
                         f"pass the same --preset/overrides or a different --out-dir")

    torch.manual_seed(a.seed)
    model = RWKV(config).to(device)
    optimizer = model.configure_optimizers(a.lr, a.weight_decay, tuple(a.betas), a.eps, a.time_lr_mult)
    data_gen = torch.Generator().manual_seed(a.seed)  # identical on every rank: one global batch
    step, records = 0, []
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        data_gen.set_state(resume["data_rng"])
        torch.set_rng_state(resume["torch_rng"])
        step, records = resume["step"], list(resume["log"])
        say(f"resumed from {a.resume if a.resume != 'auto' else ckpt_path} at step {step}")
    say(f"model: {model.num_params() / 1e6:.2f}M parameters, L{a.n_layer}-D{a.n_embd}, ctx {a.ctx_len}; "
        f"{world} process(es) x batch {a.batch_size} on {device}")

    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if a.compile:  # after DDP, as torch recommends, so DDP's bucketing is compiled through
        train_model = torch.compile(train_model)
    use_autocast = device.type == "cuda" and not a.no_autocast
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_autocast else contextlib.nullcontext

    def checkpoint():
        if master:
            out.mkdir(parents=True, exist_ok=True)
            save_checkpoint(ckpt_path, {
                "format": CKPT_FORMAT, "step": step, "config": vars(config), "args": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(a).items()},
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "data_rng": data_gen.get_state(), "torch_rng": torch.get_rng_state(), "log": records,
            })

    if master:
        out.mkdir(parents=True, exist_ok=True)
        # the log restarts from what the checkpoint knows (a killed run may have logged past it)
        with open(out / "log.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    tokens_per_step = a.batch_size * a.ctx_len * world
    bar = tqdm(total=a.max_steps, initial=step, desc="train", disable=not master, dynamic_ncols=True)
    t_last, tok_last = time.time(), 0
    while step < a.max_steps:
        lr = lr_at(step, a)
        for g in optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        x, y = sample_batch(corpus.train, a.batch_size * world, a.ctx_len, data_gen)
        sl = slice(rank * a.batch_size, (rank + 1) * a.batch_size)
        x, y = x[sl].to(device), y[sl].to(device)
        with autocast():
            _, loss = train_model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        optimizer.step()
        step += 1
        loss_sum, = all_reduce_sum([loss.item()], device, world)
        rec = {"step": step, "tokens": step * tokens_per_step, "train_loss": loss_sum / world,
               "train_bpc": loss_sum / world / math.log(2), "lr": lr}
        tok_last += tokens_per_step
        if step % a.eval_interval == 0 or step == a.max_steps:
            rec["val_bpc"], rec["val_bytes"] = evaluate(model, corpus.val, a, device, rank, world, a.eval_bytes, autocast)
            say(f"\nstep {step}: val {rec['val_bpc']:.4f} bpc (first {rec['val_bytes']:,} bytes of validation: an estimate)")
        records.append(rec)
        if master:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
        now = time.time()
        bar.set_postfix(loss=f"{rec['train_loss']:.3f}", bpc=f"{rec['train_bpc']:.3f}", lr=f"{lr:.2e}",
                        tok_s=f"{tok_last / max(now - t_last, 1e-9):,.0f}")
        bar.update()
        if now - t_last > 5:
            t_last, tok_last = now, 0
        if step % a.ckpt_interval == 0 or step == a.max_steps:
            checkpoint()
        if a.stop_after is not None and step >= a.stop_after:
            bar.close()
            say(f"stopping after step {step} (--stop-after)")
            cleanup(world)
            return {"records": records, "model": model}
    bar.close()

    result = {"records": records, "model": model}
    test_bpc, test_bytes = evaluate(model, corpus.test, a, device, rank, world, a.test_bytes, autocast)
    result["test_bpc"] = test_bpc
    label = "" if a.test_bytes is None else f" (first {test_bytes:,} bytes: an estimate)"
    say(f"test: {test_bpc:.4f} bits per character over {test_bytes:,} bytes{label}")
    if master:
        # prompt: 64 bytes of the test split starting at its first paragraph break
        head = bytes(corpus.test[: min(len(corpus.test), 65536)])
        start = head.find(b"\n\n") + 2 if b"\n\n" in head[:-64] else 0
        prompt_bytes = head[start:start + 64]
        prompt = prompt_bytes.decode("utf-8", errors="replace")
        model.eval()
        ids = model.generate(torch.tensor(list(prompt_bytes), device=device), a.sample_len,
                             temperature=0.8, top_p=0.9, seed=a.seed)
        text = decode_bytes(ids[len(prompt_bytes):].tolist())
        result["sample"] = text
        (out / "sample.txt").write_text(f"PROMPT:\n{prompt}\n\nSAMPLE:\n{text}\n", encoding="utf-8")
        say(f"\n--- sample (prompt: {prompt[:40]!r}...) ---\n{text}\n---")
        plot_log(records, out / "loss.png")
        model.save_rwkv_lm(out / "model.pth")
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "test_bpc": test_bpc, "test_bytes": test_bytes}) + "\n")
        say(f"wrote {out}/ckpt.pt, log.jsonl, loss.png, sample.txt, model.pth")
    cleanup(world)
    return result


if __name__ == "__main__":
    try:
        main()
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
