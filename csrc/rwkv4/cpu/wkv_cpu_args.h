// Plain-pointer arguments of the CPU kernels (no torch types: see wkv_cpu_kernel.h).
#pragma once

#include <cstdint>

#include "common/half_types.h"
#include "rwkv4/wkv_io.h"

namespace wkv {

// S: the math type (float, double). I: the type of the (B, T, C) sequences k, v, y, gy, gk, gv
// (S itself, or Bf16 / Half16 with float math). w is -exp(time_decay); gw, gu are (B, C), +=.
template <class S, class I = S>
struct CpuArgs : WkvIo<const S*, S*, const I*, I*> {
  int nthreads = 1;
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
