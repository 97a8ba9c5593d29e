// The RWKV-7 CPU kernels, float32 math, 16 lanes of AVX-512F. Built with -mavx512f and called
// only when the processor has it.
#include "common/vec_avx512.h"
#include "wkv7_cpu_kernel.h"

WKV7_DEFINE_CPU_KERNELS(avx512, Avx512Lane, float, float)
WKV7_DEFINE_CPU_KERNELS(avx512, Avx512Lane, float, Bf16)
WKV7_DEFINE_CPU_KERNELS(avx512, Avx512Lane, float, Half16)
