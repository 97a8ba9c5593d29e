#!/usr/bin/env bash
# Builds the CPU kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a separate
# virtualenv and runs the op tests under them (the bad-input table, the fuzz short profile and
# the CUDA kernels' CPU emulation included). Any sanitizer report fails the run (halt_on_error /
# abort_on_error) and is
# printed (pytest captures only sys-level output here, so the report reaches the terminal).
#   bash scripts/sanitize.sh            # ~2 minutes on 2 cores (once its virtualenv exists)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-asan}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# shellcheck disable=SC1091
source "$VENV/bin/activate"
python -m pip install -q torch==2.13.0 scikit-build-core "cmake>=3.26" ninja pytest hypothesis numpy tqdm
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
WKV_CUDA=OFF python -m pip install -q --no-build-isolation --no-deps -C build-dir=build/asan \
  -C cmake.define.CMAKE_CXX_FLAGS="$SAN" \
  -C cmake.define.CMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" .
# python itself is not instrumented: the sanitizer runtimes must be loaded first
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:halt_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
python - <<'PY'
import rwkv_wkv
print("sanitized build:", rwkv_wkv.build_info())
PY
python -m pytest -q -p no:cacheprovider --capture=sys tests/rwkv4/test_ops.py tests/rwkv4/test_bad_input.py tests/rwkv4/test_fuzz.py \
  tests/rwkv4/test_autograd.py tests/rwkv4/test_rwkv_lm_compat.py tests/rwkv4/test_chunked.py "$@"
echo "sanitizers: clean"
