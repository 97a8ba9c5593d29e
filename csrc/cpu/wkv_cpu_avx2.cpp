// The CPU kernel, float32 math, 8 lanes of AVX2 + FMA (+ F16C for float16 sequences). Built with
// -mavx2 -mfma -mf16c and called only when the processor has all three (checked at run time).
#include "vec_avx2.h"
#include "wkv_cpu_kernel.h"

namespace wkv {
bool forward_cpu_avx2(const CpuArgs<float>& a) { return forward_all<Avx2Lane>(a); }
bool backward_cpu_avx2(const CpuArgs<float>& a) { return backward_all<Avx2Lane>(a); }
bool forward_cpu_avx2(const CpuArgs<float, Bf16>& a) { return forward_all<Avx2Lane>(a); }
bool backward_cpu_avx2(const CpuArgs<float, Bf16>& a) { return backward_all<Avx2Lane>(a); }
bool forward_cpu_avx2(const CpuArgs<float, Half16>& a) { return forward_all<Avx2Lane>(a); }
bool backward_cpu_avx2(const CpuArgs<float, Half16>& a) { return backward_all<Avx2Lane>(a); }
}  // namespace wkv
