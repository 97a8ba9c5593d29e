// The CPU kernel, float32 math, 8 lanes of AVX2 + FMA (+ F16C for float16 sequences). Built with
// -mavx2 -mfma -mf16c and called only when the processor has all three (checked at run time).
#include "common/vec_avx2.h"
#include "wkv_cpu_kernel.h"

WKV_DEFINE_CPU_KERNELS(avx2, Avx2Lane, float, float)
WKV_DEFINE_CPU_KERNELS(avx2, Avx2Lane, float, Bf16)
WKV_DEFINE_CPU_KERNELS(avx2, Avx2Lane, float, Half16)
