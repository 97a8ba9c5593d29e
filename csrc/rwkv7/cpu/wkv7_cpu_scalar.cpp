// The RWKV-7 CPU kernels without SIMD: float64 math, and float32 on processors (or builds)
// without AVX2.
#include "wkv7_cpu_kernel.h"

WKV7_DEFINE_CPU_KERNELS(scalar, Scalar7Lane<double>, double, double)
WKV7_DEFINE_CPU_KERNELS(scalar, Scalar7Lane<float>, float, float)
WKV7_DEFINE_CPU_KERNELS(scalar, Scalar7Lane<float>, float, Bf16)
WKV7_DEFINE_CPU_KERNELS(scalar, Scalar7Lane<float>, float, Half16)
