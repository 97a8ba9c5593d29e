"""The built library is on the LibTorch stable ABI: one build loads under every torch from its
target release on (csrc/rwkv4/wkv_ops.cpp, CMakeLists.txt; .ci/run loads one wheel under several).

The mechanical proof is the dynamic symbol table: every symbol the library needs from elsewhere
is the stable C shim (aoti_torch_*, torch_*), the C/C++ runtime, OpenMP or the CUDA runtime;
none is a libtorch/libc10 C++ symbol (at::, c10::, torch::), whose mangled names change from
release to release.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess

import pytest
import torch

import rwkv_wkv

LIB = importlib.util.find_spec("rwkv_wkv._C").origin

needs_binutils = pytest.mark.skipif(
    shutil.which("nm") is None or shutil.which("readelf") is None, reason="needs binutils (nm, readelf)"
)

# Versioned symbols resolve in these system/runtime libraries (name@VERSION as nm -D prints it).
ALLOWED_VERSIONS = re.compile(r"@(GLIBC_|GLIBCXX_|CXXABI_|GCC_|GOMP_|OMP_|libcudart\.so\.)")
# Unversioned ones: the stable C shim, and weak hooks every gcc-built library references.
SHIM = re.compile(r"^(aoti_torch_|torch_)")
WEAK_HOOKS = {"_ITM_deregisterTMCloneTable", "_ITM_registerTMCloneTable", "__gmon_start__"}


def undefined_symbols(path):
    out = subprocess.run(["nm", "-D", "--undefined-only", path], capture_output=True, text=True, check=True).stdout
    return [line.split()[-1] for line in out.splitlines() if line.strip()]


def demangle(names):
    if shutil.which("c++filt") is None:
        return names
    return subprocess.run(
        ["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True
    ).stdout.splitlines()


def needed_libraries(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@needs_binutils
def test_no_libtorch_cpp_symbols():
    names = undefined_symbols(LIB)
    assert any(SHIM.match(n) for n in names), "expected the library to call the stable C shim"
    cpp = [d for d in demangle(names) if re.search(r"\b(at|c10|torch|caffe2)::", d)]
    assert not cpp, f"{LIB} needs libtorch C++ symbols (not on the stable ABI):\n" + "\n".join(cpp[:20])


@needs_binutils
def test_every_undefined_symbol_is_shim_runtime_openmp_or_cuda():
    bad = [
        n for n in undefined_symbols(LIB)
        if not (ALLOWED_VERSIONS.search(n) or SHIM.match(n) or n in WEAK_HOOKS
                or (rwkv_wkv.build_info()["cuda"] and n.startswith("__cuda")))
    ]
    assert not bad, f"{LIB} needs symbols from outside the stable shim and runtimes:\n" + "\n".join(bad[:20])


@needs_binutils
def test_needs_no_libtorch_cpp_library():
    needed = needed_libraries(LIB)
    # libtorch_cpu / libtorch_cuda hold the stable C shim; the C++-only libraries must not appear.
    for lib in ("libc10.so", "libc10_cuda.so", "libtorch.so", "libtorch_python.so"):
        assert lib not in needed, f"{LIB} links {lib}: {needed}"
    if not rwkv_wkv.build_info()["cuda"]:
        assert not any("cuda" in lib for lib in needed), f"a CPU build links CUDA libraries: {needed}"


def _version(text):
    return tuple(int(x) for x in re.match(r"(\d+)\.(\d+)", text).groups())


def test_build_info_says_the_abi_target():
    info = rwkv_wkv.build_info()
    assert info["abi"] == "stable"
    target = _version(info["abi_target"])
    assert target >= (2, 10), "the stable ABI with what this library needs starts at torch 2.10"
    assert _version(info["torch"]) >= target, "built against headers older than the target"
    assert _version(torch.__version__) >= target, "loaded under a torch older than its target"
