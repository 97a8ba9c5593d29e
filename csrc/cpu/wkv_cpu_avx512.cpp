// The CPU kernel, float32 math, 16 lanes of AVX-512F. Built with -mavx512f -mfma and called
// only when the processor has AVX-512F (wkv_cpu.cpp checks at run time).
#include "vec_avx512.h"
#include "wkv_cpu_kernel.h"

namespace wkv {
void forward_cpu_avx512(const CpuArgs<float>& a) { forward_all<Avx512Lane>(a); }
void backward_cpu_avx512(const CpuArgs<float>& a) { backward_all<Avx512Lane>(a); }
void forward_cpu_avx512(const CpuArgs<float, Bf16>& a) { forward_all<Avx512Lane>(a); }
void backward_cpu_avx512(const CpuArgs<float, Bf16>& a) { backward_all<Avx512Lane>(a); }
void forward_cpu_avx512(const CpuArgs<float, Half16>& a) { forward_all<Avx512Lane>(a); }
void backward_cpu_avx512(const CpuArgs<float, Half16>& a) { backward_all<Avx512Lane>(a); }
}  // namespace wkv
