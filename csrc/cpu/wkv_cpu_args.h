// Plain-pointer arguments of the CPU kernels (no torch types: see wkv_cpu_kernel.h).
#pragma once

#include <cstdint>

namespace wkv {

template <class S>
struct CpuArgs {
  int64_t B = 0, T = 0, C = 0;
  int nthreads = 1;
  const S* w = nullptr;         // (C,)  -exp(time_decay)
  const S* u = nullptr;         // (C,)  time_first
  const S* k = nullptr;         // (B, T, C)
  const S* v = nullptr;         // (B, T, C)
  const S* state_in = nullptr;  // (B, 3, C) or null: the empty state
  // forward
  S* y = nullptr;               // (B, T, C)
  S* state_out = nullptr;       // (B, 3, C) or null
  // backward
  const S* gy = nullptr;          // (B, T, C)
  const S* gstate_out = nullptr;  // (B, 3, C) or null: no gradient reaches the returned state
  S* gk = nullptr;                // (B, T, C), written
  S* gv = nullptr;                // (B, T, C), written
  S* gw = nullptr;                // (B, C), += dL/dtime_decay
  S* gu = nullptr;                // (B, C), += dL/dtime_first
  S* gstate_in = nullptr;         // (B, 3, C) or null, written
};

// One entry pair per instruction set; `wkv_cpu_dispatch.cpp` picks one at run time.
void forward_cpu_scalar(const CpuArgs<float>& a);
void backward_cpu_scalar(const CpuArgs<float>& a);
void forward_cpu_scalar(const CpuArgs<double>& a);
void backward_cpu_scalar(const CpuArgs<double>& a);
void forward_cpu_avx2(const CpuArgs<float>& a);
void backward_cpu_avx2(const CpuArgs<float>& a);
void forward_cpu_avx512(const CpuArgs<float>& a);
void backward_cpu_avx512(const CpuArgs<float>& a);

}  // namespace wkv
