"""Loads the compiled operator library (rwkv_wkv/_C.so) into torch.ops.wkv."""

from __future__ import annotations

import importlib.util

import torch

_loaded = False


def library_path() -> str:
    """The path of the compiled operator library, rwkv_wkv/_C.so (not loaded by this call)."""
    # find_spec works for regular and editable (redirecting) installs alike.
    spec = importlib.util.find_spec("rwkv_wkv._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "rwkv_wkv: the compiled library rwkv_wkv/_C.so was not found. Build it with\n"
            "    pip install torch scikit-build-core 'cmake>=3.26' ninja\n"
            "    pip install --no-build-isolation .\n"
            "(nothing is compiled at import time)."
        )
    return spec.origin


def load() -> None:
    global _loaded
    if _loaded:
        return
    path = library_path()
    try:
        torch.ops.load_library(path)
    except OSError as e:
        raise ImportError(
            f"rwkv_wkv: could not load {path}: {e}\n"
            f"The library is built on torch's stable ABI and loads under torch >= 2.10 (running: "
            f"{torch.__version__}, CUDA {torch.version.cuda or 'none'}). A CUDA wheel needs a CUDA "
            f"build of torch with the same CUDA major version; the CPU wheel works with any. "
            f"Otherwise rebuild with `pip install --no-build-isolation .`."
        ) from e
    _loaded = True


def build_info() -> dict:
    """What the installed build contains.

    Keys: ``cuda`` (bool, CUDA kernel compiled in), ``openmp`` (bool: False since the CPU kernels'
    threads are a pool of their own, ``threads`` = "pool": see ``thread_pool``), ``torch`` (the torch
    version whose headers it was compiled with), ``abi`` ("stable": the LibTorch stable ABI),
    ``abi_target`` (the oldest torch it loads under), ``torch_runtime`` (the one running),
    ``cpu_kernels`` (list of CPU instruction sets compiled in), ``cpu_isa`` (the one in use now)
    and, with CUDA, ``cuda_archs`` (the SM architectures compiled; "90+PTX": PTX for newer GPUs)
    and ``cuda_version`` (the toolkit's; the wheel needs a torch of the same CUDA major).
    """
    load()
    raw = torch.ops.wkv.build_info()
    info: dict = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        info[key] = value
    for key in ("cuda", "openmp"):
        info[key] = info.get(key) == "1"
    info["cpu_kernels"] = info.get("cpu_kernels", "").split(",")
    if "cuda_archs" in info:
        info["cuda_archs"] = info["cuda_archs"].split(",")
    info["torch_runtime"] = torch.__version__
    return info


def cpu_isa(isa: str | None = None) -> str:
    """Returns the instruction set the CPU kernel uses; with ``isa``, switches to it first.

    ``isa`` is "auto" (the best this processor supports), "avx512", "avx2" or "scalar";
    or "cuda_emulation": the CUDA kernels' bodies run on the CPU over their whole grids (slow;
    tests the GPU code's chunking and indexing where there is no GPU). Mainly for testing the
    fallback kernels and benchmarking them side by side.
    """
    load()
    return torch.ops.wkv.cpu_isa(isa)


def thread_pool(*, spin_us: int | None = None, caller_spin_us: int | None = None, handoff: bool | None = None,
                spread: bool | None = None, worker_delay_us: int | None = None, reset: bool = False) -> dict:
    """The CPU kernels' thread pool (csrc/common/parallel.h): its counters and settings as a dict;
    given settings are applied first (None: unchanged). For tests and benchmarks.

    Every CPU kernel (WKV-4, WKV-7, the fused step) splits its work in chunks that the calling
    thread and the pool's workers take as they come, and returns as soon as every chunk is done,
    whoever did it: a worker the scheduler has not run (another program holds its core) is not
    waited for. The number of threads is ``torch.get_num_threads()`` at each call.

    Settings: ``spin_us`` how long an idle worker spins before it sleeps (default 100);
    ``caller_spin_us`` how long the caller spins for chunks still running on workers before it
    sleeps (-1: twice its own chunks' time, the default); ``handoff`` a caller about to sleep lends
    its CPU to a worker still holding a chunk (default True); ``spread`` a worker seen taking
    chunks on the caller's CPU is kept off that CPU (default True); ``worker_delay_us`` a test
    hook: every worker sleeps this long after it wakes before it looks for work (0: off);
    ``reset`` zeroes the counters. Counters: ``regions`` (parallel calls), ``serial_runs`` (calls
    run on the calling thread: one thread, or too little work), ``busy_runs`` (calls made while
    another thread's call held the pool: run on the calling thread), ``chunks_by_workers``,
    ``caller_sleeps``, ``caller_wait_us`` (time callers waited for workers' chunks), ``long_waits``
    (waits over 1 ms), ``handoffs``, ``spreads``, ``worker_sleeps``; ``workers`` (started).
    """
    load()
    def setting(value, default):
        return default if value is None else int(value)
    raw = torch.ops.wkv.parallel_info(setting(spin_us, -1), setting(caller_spin_us, -2), setting(handoff, -1),
                                      setting(spread, -1), setting(worker_delay_us, -1), reset)
    out: dict = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        out[key] = int(value)
    for key in ("handoff", "spread"):
        out[key] = bool(out[key])
    return out


def cuda_chunk_length(length: int | str | None = None) -> int:
    """Returns the T-chunk length setting of the CUDA kernels; with ``length``, sets it first.

    0 or "auto" (the default): chosen per call from B * C, T and the GPU's multiprocessor count
    (see ``cuda_plan``); -1 or "serial": one chunk, one thread per (b, c) lane over all of T;
    a positive number: that length, rounded up to a multiple of 32. Applies to the CUDA
    kernels and to their CPU emulation (``cpu_isa("cuda_emulation")``). For benchmarks and tests.
    """
    load()
    if isinstance(length, str):
        named = {"auto": 0, "serial": -1}
        if length not in named:
            raise ValueError(f"length must be an int, 'auto' or 'serial', got {length!r}")
        length = named[length]
    return torch.ops.wkv.cuda_chunk(length)


def cuda_plan(B: int, T: int, C: int, sms: int = 0) -> int:
    """The chunk length the CUDA kernels would use for (B, T, C) under the current setting.

    A result >= T means one chunk (the serial kernel). ``sms``: multiprocessors to plan for
    (0: the current GPU's, or 132, an H100/H200, where there is no GPU).
    """
    load()
    return torch.ops.wkv.cuda_plan(B, T, C, sms)
