#!/usr/bin/env bash
# One prepared run for a GPU machine (the `device` tool; see ../shared/BUILD_NOTES.md):
# build with the CUDA kernel, run the whole test suite (CUDA cases included), run one CUDA test
# under compute-sanitizer memcheck, benchmark fp32 and bf16, and print a short summary.
# Logs and JSON go to $OUT (or ./gpu_check_out). Usage: bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(pwd)/gpu_check_out}
mkdir -p "$OUT"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
declare -A status

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

t0=$(date +%s)
WKV_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1
status[build]=$?
echo "build: rc=${status[build]} in $(( $(date +%s) - t0 ))s"
[ "${status[build]}" = 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import rwkv_wkv, torch; i = rwkv_wkv.build_info(); print(i); assert i['cuda'] and torch.cuda.is_available()"
status[cuda]=$?

$PY -m pytest -q -x -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
status[tests]=$?
tail -15 "$OUT/tests.log"

if command -v compute-sanitizer > /dev/null; then
  compute-sanitizer --tool memcheck --error-exitcode 9 $PY -m pytest -q -p no:cacheprovider \
    "tests/test_ops.py::test_split_state_equivalence" -k cuda > "$OUT/memcheck.log" 2>&1
  status[memcheck]=$?
  tail -5 "$OUT/memcheck.log"
else
  status[memcheck]=skipped
fi

if [ -f benchmarks/bench_wkv.py ]; then
  $PY benchmarks/bench_wkv.py --device cuda --json "$OUT/bench_fp32.json" > "$OUT/bench_fp32.md" 2>&1
  status[bench_fp32]=$?
  $PY benchmarks/bench_wkv.py --device cuda --dtype bf16 --quick --json "$OUT/bench_bf16.json" > "$OUT/bench_bf16.md" 2>&1
  status[bench_bf16]=$?
  cat "$OUT/bench_fp32.md" "$OUT/bench_bf16.md"
fi

echo "== summary =="
for k in "${!status[@]}"; do echo "$k: ${status[$k]}"; done | sort
for k in "${!status[@]}"; do
  case "${status[$k]}" in 0|skipped) ;; *) exit 1 ;; esac
done
