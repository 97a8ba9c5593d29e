// The RWKV-7 CPU kernels, float32 math, 8 lanes of AVX2 + FMA (+ F16C for float16 sequences).
// Built with -mavx2 -mfma -mf16c and called only when the processor has all three.
#include "common/vec_avx2.h"
#include "wkv7_cpu_kernel.h"

WKV7_DEFINE_CPU_KERNELS(avx2, Avx2Lane, float, float)
WKV7_DEFINE_CPU_KERNELS(avx2, Avx2Lane, float, Bf16)
WKV7_DEFINE_CPU_KERNELS(avx2, Avx2Lane, float, Half16)
