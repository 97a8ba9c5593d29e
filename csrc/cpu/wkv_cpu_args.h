// Plain-pointer arguments of the CPU kernels (no torch types: see wkv_cpu_kernel.h).
#pragma once

#include <cstdint>

namespace wkv {

// Storage of 16-bit inputs, layout-compatible with c10::BFloat16 / c10::Half (data only: the
// conversions live in half_convert.h with internal linkage).
struct Bf16 {
  uint16_t bits;
};
struct Half16 {
  uint16_t bits;
};

// S: the math type (float, double). I: the type of the (B, T, C) sequences k, v, y, gy, gk, gv
// (S itself, or Bf16 / Half16 with float math).
template <class S, class I = S>
struct CpuArgs {
  int64_t B = 0, T = 0, C = 0;
  int nthreads = 1;
  const S* w = nullptr;         // (C,)  -exp(time_decay)
  const S* u = nullptr;         // (C,)  time_first
  const I* k = nullptr;         // (B, T, C)
  const I* v = nullptr;         // (B, T, C)
  const S* state_in = nullptr;  // (B, 3, C) or null: the empty state
  // forward
  I* y = nullptr;               // (B, T, C)
  S* state_out = nullptr;       // (B, 3, C) or null
  // (B, ceil(T / kCheckpointSteps), 3, C) or null: the state before every kCheckpointSteps-th
  // step. Forward: written if given. Backward: read if given, else recomputed (a first pass).
  S* checkpoints = nullptr;
  // backward
  const I* gy = nullptr;          // (B, T, C)
  const S* gstate_out = nullptr;  // (B, 3, C) or null: no gradient reaches the returned state
  I* gk = nullptr;                // (B, T, C), written
  I* gv = nullptr;                // (B, T, C), written
  S* gw = nullptr;                // (B, C), += dL/dtime_decay
  S* gu = nullptr;                // (B, C), += dL/dtime_first
  S* gstate_in = nullptr;         // (B, 3, C) or null, written
};

// One entry pair per instruction set and sequence type; wkv_cpu.cpp picks one at run time.
// Each returns false if it could not allocate its scratch memory (nothing is then reliable).
#define WKV_DECLARE_CPU_KERNELS(ISA, S, I)         \
  bool forward_cpu_##ISA(const CpuArgs<S, I>& a);  \
  bool backward_cpu_##ISA(const CpuArgs<S, I>& a);
WKV_DECLARE_CPU_KERNELS(scalar, double, double)
WKV_DECLARE_CPU_KERNELS(scalar, float, float)
WKV_DECLARE_CPU_KERNELS(scalar, float, Bf16)
WKV_DECLARE_CPU_KERNELS(scalar, float, Half16)
WKV_DECLARE_CPU_KERNELS(avx2, float, float)
WKV_DECLARE_CPU_KERNELS(avx2, float, Bf16)
WKV_DECLARE_CPU_KERNELS(avx2, float, Half16)
WKV_DECLARE_CPU_KERNELS(avx512, float, float)
WKV_DECLARE_CPU_KERNELS(avx512, float, Bf16)
WKV_DECLARE_CPU_KERNELS(avx512, float, Half16)
#undef WKV_DECLARE_CPU_KERNELS

}  // namespace wkv
