// The fused step, 16 float32 lanes of AVX-512F (compiled with -mavx512f; called only on a CPU
// that has it: step_ops.cpp asks csrc/common/cpu_isa at run time).
#include "common/vec_avx512.h"

// int8 weights also get a dot product on integers where the CPU has AVX-512 VNNI (checked at run
// time; its functions carry their own target attribute, so this unit needs no further flags)
#define WKV_STEP_VNNI 1
// bf16 weights: 32 per load, widened by a shift and a mask against de-interleaved inputs
#define WKV_STEP_BF16_PAIRS 1

namespace {
inline F32x16 load_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
}  // namespace

#include "step/step_kernel.h"

WKV_DEFINE_STEP(avx512, Avx512Lane)
