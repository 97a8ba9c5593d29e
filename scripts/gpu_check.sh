#!/usr/bin/env bash
# One prepared run for a GPU machine (the `device` tool; see ../shared/BUILD_NOTES.md):
#   build with the CUDA kernel (sm_90); the whole test suite (CUDA backends: auto plan, serial,
#   32- and 96-step chunks); compute-sanitizer memcheck and initcheck on a workload through
#   every pass (scripts/gpu_workload.py); RWKV-LM's kernel side by side (compare.py from
#   ../shared/tools/rwkvlm_reference when that folder exists, its compare.json copied to
#   benchmarks/gpu/compare_<gpu>.json); the benchmark, fp32 and bf16; generation speed (the
#   CUDA-graph step; target <= 2 ms per token at L12-d512).
# Logs and JSON go to $OUT (or ./gpu_check_out). Usage: bash scripts/gpu_check.sh [quick]
#   quick: skip the test suite and the sanitizers (a rerun for timings only).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
OUT=${OUT:-$ROOT/gpu_check_out}
mkdir -p "$OUT" benchmarks/gpu
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
REF=${RWKVLM_REFERENCE:-$ROOT/../shared/tools/rwkvlm_reference}
QUICK=${1:-}
declare -A status
t_start=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - t_start ))s] $*"; }

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
GPU=$($PY -c "import torch; print(torch.cuda.get_device_name(0).lower().replace('nvidia', '').strip().replace(' ', '_').replace('-', '_'))" 2>/dev/null || echo gpu)

stamp "build"
WKV_CUDA=ON $PY -m pip install --no-build-isolation --no-deps -q . > "$OUT/build.log" 2>&1
status[build]=$?
[ "${status[build]}" = 0 ] || { tail -40 "$OUT/build.log"; exit 1; }
$PY -c "import rwkv_wkv, torch; i = rwkv_wkv.build_info(); print(i); assert i['cuda'] and torch.cuda.is_available()"
status[cuda]=$?

if [ "$QUICK" != quick ]; then
  stamp "tests"
  $PY -m pytest -q -x -p no:cacheprovider tests > "$OUT/tests.log" 2>&1
  status[tests]=$?
  tail -8 "$OUT/tests.log"
  if command -v compute-sanitizer > /dev/null; then
    for tool in memcheck initcheck; do
      stamp "compute-sanitizer $tool"
      compute-sanitizer --tool $tool --error-exitcode 9 $PY scripts/gpu_workload.py > "$OUT/$tool.log" 2>&1
      status[$tool]=$?
      tail -3 "$OUT/$tool.log"
    done
  else
    status[memcheck]=skipped
  fi
fi

if [ -f "$REF/compare.py" ]; then
  stamp "compare.py (RWKV-LM side by side)"
  OUT="$OUT/compare" $PY "$REF/compare.py" acc time > "$OUT/compare.log" 2>&1
  status[compare]=$?
  cp "$OUT/compare/compare.json" "benchmarks/gpu/compare_${GPU}.json" 2>/dev/null
  cp "$OUT/compare/compare.json" "$OUT/compare_${GPU}.json" 2>/dev/null
  grep -E "^\||rwkv_lm|Error|error" "$OUT/compare.log" | head -40
else
  status[compare]=skipped
fi

stamp "benchmark"
RWKVLM_ARG=()
[ -f "$REF/wkv_cuda.cu" ] && RWKVLM_ARG=(--rwkv-lm "$REF")
$PY benchmarks/bench_wkv.py --device cuda "${RWKVLM_ARG[@]}" --skip-naive --json "$OUT/bench_fp32.json" \
  --plot "$OUT/bench_fp32.png" > "$OUT/bench_fp32.md" 2> "$OUT/bench_fp32.err"
status[bench_fp32]=$?
$PY benchmarks/bench_wkv.py --device cuda --dtype bf16 --quick "${RWKVLM_ARG[@]}" --json "$OUT/bench_bf16.json" \
  > "$OUT/bench_bf16.md" 2> "$OUT/bench_bf16.err"
status[bench_bf16]=$?
cat "$OUT/bench_fp32.md" "$OUT/bench_bf16.md"
tail -3 "$OUT/bench_fp32.err" "$OUT/bench_bf16.err"

stamp "RWKV-7 benchmark (serial CUDA kernels; never timed before)"
$PY benchmarks/bench_wkv7.py --device cuda --skip-naive --json "$OUT/bench_wkv7.json" > "$OUT/bench_wkv7.md" \
  2> "$OUT/bench_wkv7.err"
status[bench_wkv7]=$?
cat "$OUT/bench_wkv7.md"
tail -3 "$OUT/bench_wkv7.err"

stamp "generation benchmark"
$PY benchmarks/bench_generate.py --device cuda --shapes L12-d512,L12-d768 --json "$OUT/generate_cuda.json" \
  > "$OUT/generate_cuda.md" 2> "$OUT/generate_cuda.err"
status[bench_generate]=$?
cat "$OUT/generate_cuda.md"
tail -3 "$OUT/generate_cuda.err"

stamp "summary"
for k in "${!status[@]}"; do echo "$k: ${status[$k]}"; done | sort
for k in "${!status[@]}"; do
  case "${status[$k]}" in 0|skipped) ;; *) exit 1 ;; esac
done
