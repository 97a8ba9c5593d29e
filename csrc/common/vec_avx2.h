// 8 x float32 lanes with AVX2 + FMA, for the recurrence in csrc/rwkv4/wkv.h.
// Included only by wkv_cpu_avx2.cpp (compiled with -mavx2 -mfma -mf16c); internal linkage.
#pragma once

#include <immintrin.h>

#include "half_convert.h"

namespace {

struct F32x8 {
  __m256 r;
  F32x8() = default;
  F32x8(__m256 x) : r(x) {}
  F32x8(float x) : r(_mm256_set1_ps(x)) {}
  F32x8(int x) : r(_mm256_set1_ps(float(x))) {}
};
struct Mask8 {
  __m256 m;
};

inline F32x8 operator+(F32x8 a, F32x8 b) { return _mm256_add_ps(a.r, b.r); }
inline F32x8 operator-(F32x8 a, F32x8 b) { return _mm256_sub_ps(a.r, b.r); }
inline F32x8 operator*(F32x8 a, F32x8 b) { return _mm256_mul_ps(a.r, b.r); }
inline F32x8 operator/(F32x8 a, F32x8 b) { return _mm256_div_ps(a.r, b.r); }
inline F32x8 operator-(F32x8 a) { return _mm256_xor_ps(a.r, _mm256_set1_ps(-0.0f)); }
inline Mask8 operator>=(F32x8 a, F32x8 b) { return {_mm256_cmp_ps(a.r, b.r, _CMP_GE_OQ)}; }
inline F32x8 wkv_fma(F32x8 a, F32x8 b, F32x8 c) { return _mm256_fmadd_ps(a.r, b.r, c.r); }
inline float wkv_hsum(F32x8 a) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.r), _mm256_extractf128_ps(a.r, 1));
  const __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
inline F32x8 wkv_abs(F32x8 a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.r); }
inline F32x8 wkv_select(Mask8 m, F32x8 a, F32x8 b) { return _mm256_blendv_ps(b.r, a.r, m.m); }

// exp(x) for x <= 0, as in vec_avx512.h; 2^n is built in the exponent bits, so the argument is
// clamped at -87.3 (exp = 1.2e-38, negligible beside the other term of every pair).
inline F32x8 wkv_exp_nonpos(F32x8 x) {
  const __m256 xx = _mm256_max_ps(_mm256_set1_ps(-87.3f), x.r);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(xx, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xx);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// exp(x) for any x, from wkv_exp_nonpos: exp(-|x|), inverted for x > 0; exactly 0 below -87.3
// (float underflows there anyway), inf above 88.72, NaN kept.
inline F32x8 wkv_exp(F32x8 x) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 e = wkv_exp_nonpos(F32x8(_mm256_sub_ps(zero, wkv_abs(x).r))).r;
  __m256 r = _mm256_blendv_ps(e, _mm256_div_ps(_mm256_set1_ps(1.0f), e), _mm256_cmp_ps(x.r, zero, _CMP_GT_OQ));
  r = _mm256_blendv_ps(r, zero, _mm256_cmp_ps(x.r, _mm256_set1_ps(-87.3f), _CMP_LT_OQ));
  r = _mm256_blendv_ps(r, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x.r, _mm256_set1_ps(88.72f), _CMP_GT_OQ));
  return _mm256_blendv_ps(r, x.r, _mm256_cmp_ps(x.r, x.r, _CMP_UNORD_Q));
}

struct Avx2Lane {
  using V = F32x8;
  static constexpr int64_t W = 8;
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V x) { _mm256_storeu_ps(p, x.r); }
  // 16-bit sequences: widened on load, rounded to nearest even on store (NaN stays NaN)
  static V load(const Bf16* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static V load(const Half16* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store(Bf16* p, V x) {
    const __m256i u = _mm256_castps_si256(x.r);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb)), 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(x.r, x.r, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // 8 x 32-bit -> 8 x 16-bit: pack within 128-bit halves, then gather the two low quarters
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  static void store(Half16* p, V x) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(x.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static constexpr int64_t kStreamAlign = 32;
  static void stream(float* p, V x) { _mm256_stream_ps(p, x.r); }  // p 32-byte aligned
  static void fence() { _mm_sfence(); }
};

}  // namespace
