// The portable CPU kernel: one scalar lane per channel, float32 and float64 math. Built with the
// compiler's baseline flags; runs everywhere, and is the float64 path used by gradcheck.
#include "wkv_cpu_kernel.h"

namespace wkv {
void forward_cpu_scalar(const CpuArgs<float>& a) { forward_all<ScalarLane<float>>(a); }
void backward_cpu_scalar(const CpuArgs<float>& a) { backward_all<ScalarLane<float>>(a); }
void forward_cpu_scalar(const CpuArgs<float, Bf16>& a) { forward_all<ScalarLane<float>>(a); }
void backward_cpu_scalar(const CpuArgs<float, Bf16>& a) { backward_all<ScalarLane<float>>(a); }
void forward_cpu_scalar(const CpuArgs<float, Half16>& a) { forward_all<ScalarLane<float>>(a); }
void backward_cpu_scalar(const CpuArgs<float, Half16>& a) { backward_all<ScalarLane<float>>(a); }
void forward_cpu_scalar(const CpuArgs<double>& a) { forward_all<ScalarLane<double>>(a); }
void backward_cpu_scalar(const CpuArgs<double>& a) { backward_all<ScalarLane<double>>(a); }
}  // namespace wkv
