"""A small CUDA workload that touches every pass of every kernel, for compute-sanitizer:
every dtype, the serial kernel and T-chunked ones (one and several segments per chunk, T not a
multiple of the chunk), odd shapes, state in and out with gradients, checkpoints saved and
recomputed, and RWKV-LM's two ops. Each result is checked against the CPU kernel.

    compute-sanitizer --tool memcheck python scripts/gpu_workload.py
    python scripts/gpu_workload.py --emulate      # the same on the CPU emulation (no GPU)
"""

import sys

import torch

import rwkv_wkv

SHAPES = [(1, 1, 1), (3, 7, 5), (2, 33, 65), (1, 130, 97), (2, 300, 37)]
CHUNKS = ["serial", 32, 96, "auto"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def run(device, dtype, shape, seed=0):
    B, T, C = shape
    g = torch.Generator().manual_seed(seed)
    math = torch.float64 if dtype == torch.float64 else torch.float32
    td = torch.randn(C, generator=g, dtype=math) - 1
    tf = torch.randn(C, generator=g, dtype=math)
    k = (2 * torch.randn(B, T, C, generator=g)).to(dtype)
    v = torch.randn(B, T, C, generator=g).to(dtype)
    s0 = rwkv_wkv.wkv_with_state(td, tf, k[:, :1], v[:, :1])[1].to(math)
    gy = torch.randn(B, T, C, generator=g).to(dtype)
    gs = torch.randn(B, 3, C, generator=g, dtype=math)
    leaves = [x.to(device).requires_grad_() for x in (td, tf, k, v, s0)]
    y, s = rwkv_wkv.wkv_with_state(*leaves)
    torch.autograd.backward([y, s], [gy.to(device), gs.to(device)])
    out = [y.detach(), s.detach()] + [x.grad for x in leaves]
    # RWKV-LM's contract (no checkpoints: the backward recomputes them)
    w = -torch.exp(td.to(device))
    y2 = torch.empty_like(k, device=device)
    torch.ops.wkv.forward(B, T, C, w, tf.to(device), k.to(device), v.to(device), y2)
    gw, gu = torch.zeros(B, C, dtype=math, device=device), torch.zeros(B, C, dtype=math, device=device)
    gk, gv = torch.empty_like(y2), torch.empty_like(y2)
    torch.ops.wkv.backward(B, T, C, w, tf.to(device), k.to(device), v.to(device), gy.to(device), gw, gu, gk, gv)
    return [t.double().cpu() for t in out + [y2, gw, gu, gk, gv]]


def main(emulate=False):
    if not emulate:
        assert torch.cuda.is_available() and rwkv_wkv.build_info()["cuda"], "needs a GPU and a CUDA build"
    worst = 0.0
    for dtype in DTYPES:
        for shape in SHAPES:
            ref = run("cpu", dtype, shape)
            for chunk in CHUNKS:
                rwkv_wkv.cuda_chunk_length(chunk)
                rwkv_wkv.cpu_isa("cuda_emulation" if emulate else "auto")
                got = run("cpu" if emulate else "cuda", dtype, shape)
                rwkv_wkv.cpu_isa("auto")
                rwkv_wkv.cuda_chunk_length("auto")
                tol = {torch.float64: 1e-9, torch.float32: 2e-4}.get(dtype, 5e-2)
                for i, (a, b) in enumerate(zip(got, ref)):
                    err = ((a - b).abs().max() / b.abs().max().clamp_min(1)).item()
                    worst = max(worst, err) if dtype != torch.bfloat16 else worst
                    assert err <= tol, f"{dtype} {shape} chunk={chunk} output {i}: {err:.3g}"
    if not emulate:
        torch.cuda.synchronize()
    print(f"gpu_workload: ok ({len(DTYPES) * len(SHAPES) * len(CHUNKS)} cases; worst relative error "
          f"outside bf16 {worst:.2g})")


if __name__ == "__main__":
    main(emulate="--emulate" in sys.argv[1:])
