// The CPU kernel, float32 math, 16 lanes of AVX-512F. Built with -mavx512f -mfma and called
// only when the processor has AVX-512F (wkv_cpu.cpp checks at run time).
#include "common/vec_avx512.h"
#include "wkv_cpu_kernel.h"

WKV_DEFINE_CPU_KERNELS(avx512, Avx512Lane, float, float)
WKV_DEFINE_CPU_KERNELS(avx512, Avx512Lane, float, Bf16)
WKV_DEFINE_CPU_KERNELS(avx512, Avx512Lane, float, Half16)
