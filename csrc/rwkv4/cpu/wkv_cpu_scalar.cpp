// The portable CPU kernel: one scalar lane per channel, float32 and float64 math. Built with the
// compiler's baseline flags; runs everywhere, and is the float64 path used by gradcheck.
#include "wkv_cpu_kernel.h"

WKV_DEFINE_CPU_KERNELS(scalar, ScalarLane<float>, float, float)
WKV_DEFINE_CPU_KERNELS(scalar, ScalarLane<float>, float, Bf16)
WKV_DEFINE_CPU_KERNELS(scalar, ScalarLane<float>, float, Half16)
WKV_DEFINE_CPU_KERNELS(scalar, ScalarLane<double>, double, double)
