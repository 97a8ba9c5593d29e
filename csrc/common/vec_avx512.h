// 16 x float32 lanes with AVX-512F, for the recurrence in csrc/rwkv4/wkv.h.
// Included only by wkv_cpu_avx512.cpp (compiled with -mavx512f -mfma); internal linkage.
#pragma once

#include <immintrin.h>

#include "half_convert.h"

namespace {

struct F32x16 {
  __m512 r;
  F32x16() = default;
  F32x16(__m512 x) : r(x) {}
  F32x16(float x) : r(_mm512_set1_ps(x)) {}
  F32x16(int x) : r(_mm512_set1_ps(float(x))) {}
};
struct Mask16 {
  __mmask16 m;
};

inline F32x16 operator+(F32x16 a, F32x16 b) { return _mm512_add_ps(a.r, b.r); }
inline F32x16 operator-(F32x16 a, F32x16 b) { return _mm512_sub_ps(a.r, b.r); }
inline F32x16 operator*(F32x16 a, F32x16 b) { return _mm512_mul_ps(a.r, b.r); }
inline F32x16 operator/(F32x16 a, F32x16 b) { return _mm512_div_ps(a.r, b.r); }
inline F32x16 operator-(F32x16 a) {
  return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a.r),
                                              _mm512_set1_epi32(int(0x80000000u))));
}
inline Mask16 operator>=(F32x16 a, F32x16 b) { return {_mm512_cmp_ps_mask(a.r, b.r, _CMP_GE_OQ)}; }
inline F32x16 wkv_fma(F32x16 a, F32x16 b, F32x16 c) { return _mm512_fmadd_ps(a.r, b.r, c.r); }
inline float wkv_hsum(F32x16 a) { return _mm512_reduce_add_ps(a.r); }
inline F32x16 wkv_abs(F32x16 a) { return _mm512_abs_ps(a.r); }
inline F32x16 wkv_select(Mask16 m, F32x16 a, F32x16 b) { return _mm512_mask_blend_ps(m.m, b.r, a.r); }

// exp(x) for x <= 0: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a degree-7 polynomial
// (Cephes expf's coefficients, ~1 ulp), then scale by 2^n with scalef (underflows to 0).
// NaN propagates: max() returns its second operand when either is NaN.
inline F32x16 wkv_exp_nonpos(F32x16 x) {
  const __m512 xx = _mm512_max_ps(_mm512_set1_ps(-104.0f), x.r);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(xx, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), xx);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// exp(x) for any x, from wkv_exp_nonpos: exp(-|x|), inverted for x > 0; exactly 0 below -87.3
// (float underflows there anyway), inf above 88.72, NaN kept.
inline F32x16 wkv_exp(F32x16 x) {
  const __m512 zero = _mm512_setzero_ps();
  const __m512 e = wkv_exp_nonpos(F32x16(_mm512_sub_ps(zero, _mm512_abs_ps(x.r)))).r;
  __m512 r = _mm512_mask_div_ps(e, _mm512_cmp_ps_mask(x.r, zero, _CMP_GT_OQ), _mm512_set1_ps(1.0f), e);
  r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x.r, _mm512_set1_ps(-87.3f), _CMP_LT_OQ), zero);
  r = _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x.r, _mm512_set1_ps(88.72f), _CMP_GT_OQ),
                         _mm512_set1_ps(__builtin_inff()));
  return _mm512_mask_mov_ps(r, _mm512_cmp_ps_mask(x.r, x.r, _CMP_UNORD_Q), x.r);
}

struct Avx512Lane {
  using V = F32x16;
  static constexpr int64_t W = 16;
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V x) { _mm512_storeu_ps(p, x.r); }
  // 16-bit sequences: widened on load, rounded to nearest even on store (NaN stays NaN)
  static V load(const Bf16* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static V load(const Half16* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store(Bf16* p, V x) {
    const __m512i u = _mm512_castps_si512(x.r);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb)), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(x.r, x.r, _CMP_UNORD_Q);
    r = _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7fc0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
  static void store(Half16* p, V x) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(x.r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  static constexpr int64_t kStreamAlign = 64;
  static void stream(float* p, V x) { _mm512_stream_ps(p, x.r); }  // p 64-byte aligned
  static void fence() { _mm_sfence(); }
};

}  // namespace
