// The portable CPU kernel: one scalar lane per channel, float32 and float64 math. Built with the
// compiler's baseline flags; runs everywhere, and is the float64 path used by gradcheck.
#include "wkv_cpu_kernel.h"

namespace wkv {
bool forward_cpu_scalar(const CpuArgs<float>& a) { return forward_all<ScalarLane<float>>(a); }
bool backward_cpu_scalar(const CpuArgs<float>& a) { return backward_all<ScalarLane<float>>(a); }
bool forward_cpu_scalar(const CpuArgs<float, Bf16>& a) { return forward_all<ScalarLane<float>>(a); }
bool backward_cpu_scalar(const CpuArgs<float, Bf16>& a) { return backward_all<ScalarLane<float>>(a); }
bool forward_cpu_scalar(const CpuArgs<float, Half16>& a) { return forward_all<ScalarLane<float>>(a); }
bool backward_cpu_scalar(const CpuArgs<float, Half16>& a) { return backward_all<ScalarLane<float>>(a); }
bool forward_cpu_scalar(const CpuArgs<double>& a) { return forward_all<ScalarLane<double>>(a); }
bool backward_cpu_scalar(const CpuArgs<double>& a) { return backward_all<ScalarLane<double>>(a); }
}  // namespace wkv
