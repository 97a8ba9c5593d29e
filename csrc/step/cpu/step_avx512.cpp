// The fused step, 16 float32 lanes of AVX-512F (compiled with -mavx512f; called only on a CPU
// that has it: step_ops.cpp asks csrc/common/cpu_isa at run time).
#include "common/vec_avx512.h"

namespace {
inline F32x16 load_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
}  // namespace

#include "step/step_kernel.h"

WKV_DEFINE_STEP(avx512, Avx512Lane)
