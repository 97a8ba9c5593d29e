"""Training memory and speed per rank: one process, DDP x2 and FSDP2 x2, side by side.

    python benchmarks/bench_train.py                          # L12-d768, vocab 50277 (169M), CPU
    python benchmarks/bench_train.py --json benchmarks/train_cpu.json --device cuda

Each configuration runs in its own processes (torchrun-style, gloo on CPU / nccl on CUDA) with
the same model (RWKV-4 169M's shape, random weights), AdamW, a global batch of --batch windows
of --ctx tokens, and measures per rank: the bytes it holds of weights, gradients and optimizer
state (its shards under FSDP; counted tensor by tensor), peak allocated CUDA memory where there
is a GPU, peak resident memory of the process, and tokens/s over --steps steps after one warm-up
step. Then, from the measured bytes per parameter, it states the largest RWKV-4 model whose
weights + gradients + Adam state fit an 80 GB GPU with DDP (everything replicated) and with FSDP
over 8 GPUs (everything sharded, plus one unsharded block in flight), keeping 20% of the GPU for
activations and buffers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from rwkv_wkv.errors import ArgumentParser, run_command

RWKV4 = {  # the released RWKV-4 Pile models: (n_layer, n_embd)
    "169M": (12, 768), "430M": (24, 1024), "1.5B": (24, 2048), "3B": (32, 2560), "7B": (32, 4096), "14B": (40, 5120),
}
VOCAB = 50277


def worker(a):
    """One rank of one configuration; rank 0 prints a JSON line."""
    import torch.distributed as dist

    from rwkv_wkv import RWKV, RWKVConfig
    from rwkv_wkv.training import cleanup

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = a.device == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if world > 1:
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    torch.manual_seed(0)
    model = RWKV(RWKVConfig(vocab_size=VOCAB, n_layer=a.layers, n_embd=a.hidden, ctx_len=a.ctx)).to(device)
    n_params = model.num_params()
    if a.mode == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if cuda
            else MixedPrecisionPolicy()
        )
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        train_model = model
    elif a.mode == "ddp":
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    else:
        train_model = model
    optimizer = model.configure_optimizers(1e-4)
    per_rank = a.batch // world
    gen = torch.Generator().manual_seed(0)

    def step():
        x = torch.randint(0, VOCAB, (a.batch, a.ctx + 1), generator=gen)[rank * per_rank : (rank + 1) * per_rank].to(
            device
        )
        _, loss = train_model(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep the gradients allocated: they are part of what a rank holds
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up (allocates gradients and Adam state)
    if world > 1:
        dist.barrier()
    t = time.perf_counter()
    for _ in range(a.steps):
        step()
    elapsed = time.perf_counter() - t

    def size(x):
        x = x.to_local() if hasattr(x, "to_local") else x
        return x.numel() * x.element_size()

    held = {
        "weights": sum(size(p) for p in model.parameters()),
        "grads": sum(size(p.grad) for p in model.parameters() if p.grad is not None),
        "optimizer": sum(
            size(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0
        ),
    }
    rec = {"mode": a.mode, "world": world, "params": n_params, "held_bytes": held,
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
           "tokens_per_s": a.steps * a.batch * a.ctx / elapsed}
    if cuda:
        rec["peak_cuda_bytes"] = torch.cuda.max_memory_allocated(device)
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rec)
        rec["held_bytes_max_rank"] = max(sum(r["held_bytes"].values()) for r in gathered)
    cleanup(world)  # gc, barrier, then destroy: a rank leaving early can abort in gloo's threads
    if rank == 0:
        print("RESULT " + json.dumps(rec), flush=True)
    if world > 1:
        # gloo's worker threads can still abort the process while the interpreter shuts down
        # ("terminate called without an active exception", seen once in CI): the result is out, leave now
        sys.stderr.flush()
        os._exit(0)


def run_config(a, mode, world):
    args = ["--worker", mode, "--layers", str(a.layers), "--hidden", str(a.hidden), "--ctx", str(a.ctx),
            "--batch", str(a.batch), "--steps", str(a.steps), "--device", a.device]
    if world == 1:
        cmd = [sys.executable, __file__, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={world}",
            __file__,
            *args,
        ]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // world)))
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        sys.exit(f"{mode} x{world} failed:\n{r.stderr[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])


def count_params(layers, hidden):
    from rwkv_wkv import RWKV, RWKVConfig

    with torch.device("meta"):
        return RWKV(RWKVConfig(vocab_size=VOCAB, n_layer=layers, n_embd=hidden, ctx_len=1024)).num_params()


def main(argv=None):
    p = ArgumentParser(__doc__)
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--ctx", type=int, default=128, help="tokens per window")
    p.add_argument("--batch", type=int, default=2, help="global batch (windows), split over the ranks")
    p.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=["single", "ddp", "fsdp"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.mode = a.worker
        return worker(a)

    from tqdm import tqdm

    records = []
    for mode, world in tqdm([("single", 1), ("ddp", 2), ("fsdp", 2)], desc="configurations", file=sys.stderr):
        records.append(run_config(a, mode, world))
    gib = 1024 ** 3
    n = records[0]["params"]
    print(f"# RWKV-4 L{a.layers}-d{a.hidden}, vocab {VOCAB}: {n / 1e6:.1f}M parameters; AdamW, float32 weights; "
          f"global batch {a.batch} x {a.ctx} tokens; {a.device}; torch {torch.__version__}")
    print(
        "| configuration | weights GiB/rank | grads GiB/rank | Adam state GiB/rank | total GiB/rank "
        "| peak RSS GiB/rank | tokens/s (all ranks) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in records:
        h = r["held_bytes"]
        name = {"single": "1 process", "ddp": "DDP x2", "fsdp": "FSDP2 x2"}[r["mode"]]
        print(f"| {name} | {h['weights'] / gib:.3f} | {h['grads'] / gib:.3f} | {h['optimizer'] / gib:.3f} | "
              f"{sum(h.values()) / gib:.3f} | {r['peak_rss_bytes'] / gib:.2f} | {r['tokens_per_s']:,.0f} |")
    # bytes per parameter a rank holds, from the measurements
    per_param_ddp = sum(records[1]["held_bytes"].values()) / n
    per_param_fsdp = records[2]["held_bytes_max_rank"] * records[2]["world"] / n  # all shards together
    budget = 0.8 * 80e9
    print(f"\nMeasured: DDP holds {per_param_ddp:.2f} bytes per parameter on every rank; FSDP2 holds "
          f"{per_param_fsdp:.2f} bytes per parameter in all, split over the ranks.")
    print(f"Largest RWKV-4 whose weights + gradients + Adam state fit 80% of an 80 GB GPU ({budget / 1e9:.0f} GB):")
    fits = {}
    for name, (layers, hidden) in RWKV4.items():
        params = count_params(layers, hidden)
        block = (params - 2 * VOCAB * hidden) / layers  # one block's parameters
        ddp = params * per_param_ddp
        fsdp8 = params * per_param_fsdp / 8 + 2 * block * 4  # + one block gathered (weights and grads) at a time
        fits[name] = {"params": params, "ddp_bytes": ddp, "fsdp8_bytes": fsdp8}
        print(
            f"  {name:>5} ({params / 1e9:.2f}B): DDP {ddp / 1e9:6.1f} GB "
            f"{'fits' if ddp <= budget else 'does not fit'}; "
            f"FSDP x8 {fsdp8 / 1e9:5.1f} GB {'fits' if fsdp8 <= budget else 'does not fit'}"
        )
    def best(key):
        return max((k for k, v in fits.items() if v[key] <= budget), key=lambda k: fits[k]["params"], default="none")
    print(f"=> DDP: up to RWKV-4 {best('ddp_bytes')}; FSDP2 over 8 GPUs: up to RWKV-4 {best('fsdp8_bytes')}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"records": records, "fits_80gb": fits, "budget_bytes": budget,
                       "largest": {"ddp": best("ddp_bytes"), "fsdp8": best("fsdp8_bytes")}}, f, indent=1)


if __name__ == "__main__":
    sys.exit(run_command(main))
