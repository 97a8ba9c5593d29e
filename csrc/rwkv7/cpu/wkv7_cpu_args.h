// Plain-pointer arguments of the RWKV-7 CPU kernels (no torch types: see wkv7_cpu_kernel.h).
#pragma once

#include <cstdint>

#include "common/half_types.h"
#include "rwkv7/wkv7.h"

namespace wkv::v7 {

// S: the math type (float, double). I: the type of the (B, T, H, N) sequences (S itself, or
// Bf16 / Half16 with float math).
template <class S, class I = S>
struct CpuArgs : Wkv7Io<const S*, S*, const I*, I*> {
  int nthreads = 1;
};

// One entry pair per instruction set and sequence type; wkv7_cpu.cpp picks one at run time.
// Each returns false if it could not allocate its scratch memory.
#define WKV7_DECLARE_CPU_KERNELS(ISA, S, I)         \
  bool forward_cpu_##ISA(const CpuArgs<S, I>& a);   \
  bool backward_cpu_##ISA(const CpuArgs<S, I>& a);
WKV7_DECLARE_CPU_KERNELS(scalar, double, double)
WKV7_DECLARE_CPU_KERNELS(scalar, float, float)
WKV7_DECLARE_CPU_KERNELS(scalar, float, Bf16)
WKV7_DECLARE_CPU_KERNELS(scalar, float, Half16)
WKV7_DECLARE_CPU_KERNELS(avx2, float, float)
WKV7_DECLARE_CPU_KERNELS(avx2, float, Bf16)
WKV7_DECLARE_CPU_KERNELS(avx2, float, Half16)
WKV7_DECLARE_CPU_KERNELS(avx512, float, float)
WKV7_DECLARE_CPU_KERNELS(avx512, float, Bf16)
WKV7_DECLARE_CPU_KERNELS(avx512, float, Half16)
#undef WKV7_DECLARE_CPU_KERNELS

}  // namespace wkv::v7
