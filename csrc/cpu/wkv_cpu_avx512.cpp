// The CPU kernel, float32 math, 16 lanes of AVX-512F. Built with -mavx512f -mfma and called
// only when the processor has AVX-512F (wkv_cpu.cpp checks at run time).
#include "vec_avx512.h"
#include "wkv_cpu_kernel.h"

namespace wkv {
bool forward_cpu_avx512(const CpuArgs<float>& a) { return forward_all<Avx512Lane>(a); }
bool backward_cpu_avx512(const CpuArgs<float>& a) { return backward_all<Avx512Lane>(a); }
bool forward_cpu_avx512(const CpuArgs<float, Bf16>& a) { return forward_all<Avx512Lane>(a); }
bool backward_cpu_avx512(const CpuArgs<float, Bf16>& a) { return backward_all<Avx512Lane>(a); }
bool forward_cpu_avx512(const CpuArgs<float, Half16>& a) { return forward_all<Avx512Lane>(a); }
bool backward_cpu_avx512(const CpuArgs<float, Half16>& a) { return backward_all<Avx512Lane>(a); }
}  // namespace wkv
