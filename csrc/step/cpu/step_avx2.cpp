// The fused step, 8 float32 lanes of AVX2 + FMA + F16C.
#include "common/vec_avx2.h"

namespace {
inline F32x8 load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
}  // namespace

#include "step/step_kernel.h"

WKV_DEFINE_STEP(avx2, Avx2Lane)
