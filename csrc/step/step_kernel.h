// The fused step's kernels, one template over the SIMD lane type (the lanes of
// csrc/common/vec_avx512.h / vec_avx2.h, or ScalarLane), included only by cpu/step_<isa>.cpp.
// Each unit defines `load_i8(const int8_t*)` for its lane before including this file.
//
// The matrix-vector products are the step's cost (every weight read once per token): rows are
// split in chunks of whole 16-row blocks that threads take through the one parallel-for
// (common/parallel.h); each row's dot product runs over 2 SIMD accumulators per batch row, the
// weight vector loaded once for up to 4 batch rows. Several products that need the same inputs
// run in one parallel region (gemv_many). The rest (layer norms, mixes, the WKV step) is O(C)
// per row: plain loops the compiler vectorises.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/half_types.h"
#include "common/parallel.h"
#include "step/step.h"

namespace {

using wkv::Bf16;
using wkv::Half16;
using wkv::step::Format;
using wkv::step::Matrix;

// One matrix-vector product job: y[b * ldy + o] = sum_i W[o, i] x[b * ldx + i] for rows o.
struct Job {
  const Matrix* m;
  const float* x;
  int64_t ldx;
  float* y;
  int64_t ldy;
  // int8 weights on a CPU with AVX-512 VNNI: the inputs quantized in blocks of 64 (uint8 with +128
  // offset, one float scale per block; gemv_many fills these), so the dot product runs on integers
  const uint8_t* xq = nullptr;
  const float* xscale = nullptr;
  // bf16 weights on AVX-512: the inputs de-interleaved per block of 32 (see dot_rows_bf16_pairs),
  // row b at xp + b * cols (gemv_many fills it)
  const float* xp = nullptr;
};

// Calls f(std::integral_constant<int, NB>, b0) for batch rows [b0, b0 + NB) in groups of 4, then
// the 1-3 left: every dot-product kernel takes its group size as a template argument (its
// accumulators are arrays of NB registers), and this is the one place that splits B.
template <class F>
void in_groups_of_4(int64_t B, F&& f) {
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) f(std::integral_constant<int, 4>{}, b);
  switch (B - b) {
    case 3: f(std::integral_constant<int, 3>{}, b); break;
    case 2: f(std::integral_constant<int, 2>{}, b); break;
    case 1: f(std::integral_constant<int, 1>{}, b); break;
    default: break;
  }
}

// Formats whose products run on integers with VNNI: their inputs are quantized per block of 64.
inline bool quantized_inputs(Format f) { return f == Format::I8 || f == Format::Q4; }

#if defined(WKV_STEP_VNNI)
// Inputs of an int8 product, quantized per block of 64: q = round(x / s) + 128 in [1, 255],
// s = max |x| / 127 over the block (the last block may be partial).
void quantize_blocks(const float* x, int64_t cols, uint8_t* q, float* scale) {
  for (int64_t k0 = 0, blk = 0; k0 < cols; k0 += 64, ++blk) {
    const int64_t n = std::min<int64_t>(64, cols - k0);
    float mx = 0.0f;
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, std::fabs(x[k0 + i]));
    const float s = mx > 0.0f ? mx / 127.0f : 1.0f, inv = 1.0f / s;
    for (int64_t i = 0; i < n; ++i) q[k0 + i] = uint8_t(int(std::nearbyint(x[k0 + i] * inv)) + 128);
    scale[blk] = s;
  }
}

// The integer dot products of int8 and Q4 weights against inputs quantized per block of 64 (the
// +128 offset corrected: sum (q - 128) w = dpbusd(q, w) - 128 dpbusd(1, w)). One weight block,
// widened to 64 int8 lanes once, serves NB batch rows.
//   int8: one block is 64 weights; its sum turns to float with the input block's scale, and the
//         row's weight scale multiplies the row's total.
//   Q4:   the block's 32 packed bytes are split into their nibbles (low: inputs 0-31, high: 32-63,
//         as the input block), 8 subtracted; int32 lanes 0-7 then hold the first 32 inputs' sums,
//         8-15 the next 32's, so one vector of the two weight scales (times the input block's)
//         turns them to float. The padding past cols has q = 0: the input block's stale bytes
//         there add nothing.
template <int NB, bool Q4>
__attribute__((target("avx512f,avx512bw,avx512vnni,avx512dq")))
void dot_rows_vnni(const Job& j, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t cols = j.m->cols, nblk = (cols + 63) / 64;
  const int64_t full = Q4 ? nblk : cols / 64, tail = full * 64;  // int8: whole blocks, then a scalar tail
  const int64_t row_bytes = Q4 ? wkv::step::q4_row_bytes(cols) : cols;
  const int64_t row_scales = Q4 ? wkv::step::q4_row_scales(cols) : 1;
  const __m512i ones = _mm512_set1_epi8(1);
  const __m256i nibble = _mm256_set1_epi8(0x0F);
  const __m512i eight = _mm512_set1_epi8(8);
  const uint8_t* qs[NB];
  const float* xss[NB];
  for (int b = 0; b < NB; ++b) {
    qs[b] = j.xq + (b0 + b) * nblk * 64;
    xss[b] = j.xscale + (b0 + b) * nblk;
  }
  for (int64_t o = r0; o < r1; ++o) {
    const uint8_t* w = static_cast<const uint8_t*>(j.m->w) + o * row_bytes;
    const float* ws = j.m->scale + o * row_scales;
    __m512 acc[NB];
    for (int b = 0; b < NB; ++b) acc[b] = _mm512_setzero_ps();
    for (int64_t blk = 0; blk < full; ++blk) {
      __m512i wv;
      __m512 wscale;
      if constexpr (Q4) {
        const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + blk * 32));
        const __m256i lo = _mm256_and_si256(raw, nibble);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), nibble);
        wv = _mm512_sub_epi8(_mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1), eight);
        wscale = _mm512_insertf32x8(_mm512_set1_ps(ws[2 * blk]), _mm256_set1_ps(ws[2 * blk + 1]), 1);
      } else {
        wv = _mm512_loadu_si512(w + blk * 64);
        wscale = _mm512_set1_ps(1.0f);
      }
      const __m512i sw = _mm512_slli_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, wv), 7);
      for (int b = 0; b < NB; ++b) {
        const __m512i qw = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(qs[b] + blk * 64), wv);
        const __m512 scale = _mm512_mul_ps(wscale, _mm512_set1_ps(xss[b][blk]));
        acc[b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(qw, sw)), scale, acc[b]);
      }
    }
    for (int b = 0; b < NB; ++b) {
      float s = _mm512_reduce_add_ps(acc[b]);
      if (!Q4 && tail < cols) {
        const int8_t* wi = reinterpret_cast<const int8_t*>(w);
        int32_t t = 0;
        for (int64_t i = tail; i < cols; ++i) t += (int32_t(qs[b][i]) - 128) * int32_t(wi[i]);
        s += float(t) * xss[b][full];
      }
      j.y[(b0 + b) * j.ldy + o] = Q4 ? s : s * j.m->scale[o];
    }
  }
}

template <bool Q4>
void rows_vnni(const Job& j, int64_t r0, int64_t r1, int64_t B) {
  in_groups_of_4(B, [&](auto nb, int64_t b0) { dot_rows_vnni<decltype(nb)::value, Q4>(j, r0, r1, b0); });
}
#endif

#if defined(WKV_STEP_BF16_PAIRS)
// bf16 weights, AVX-512: 32 weights per 512-bit load, widened without a shuffle: the even-indexed
// ones are the low halves of the 32-bit lanes (shifted up 16 bits), the odd-indexed ones the high
// halves (masked). The inputs are de-interleaved to match, once per call (gemv_many): per block of
// 32, the 16 even-indexed values, then the 16 odd-indexed ones; a partial last block is copied as is.
void deinterleave_pairs(const float* x, int64_t cols, float* out) {
  const int64_t full = cols / 32 * 32;
  for (int64_t k0 = 0; k0 < full; k0 += 32) {
    for (int i = 0; i < 16; ++i) {
      out[k0 + i] = x[k0 + 2 * i];
      out[k0 + 16 + i] = x[k0 + 2 * i + 1];
    }
  }
  for (int64_t i = full; i < cols; ++i) out[i] = x[i];
}

// Rows [r0, r1) of a bf16 job for batch rows [b0, b0 + NB): float32 products and sums, as the
// generic path, in another order (the even and the odd weights in two accumulators).
template <int NB>
void dot_rows_bf16_pairs(const Job& j, int64_t r0, int64_t r1, int64_t b0) {
  const int64_t cols = j.m->cols, full = cols / 32 * 32;
  const Bf16* base = static_cast<const Bf16*>(j.m->w);
  const __m512i high = _mm512_set1_epi32(int(0xFFFF0000u));
  const float* xs[NB];
  for (int b = 0; b < NB; ++b) xs[b] = j.xp + (b0 + b) * cols;
  for (int64_t o = r0; o < r1; ++o) {
    const Bf16* w = base + o * cols;
    __m512 even[NB], odd[NB];
    for (int b = 0; b < NB; ++b) even[b] = odd[b] = _mm512_setzero_ps();
    for (int64_t i = 0; i < full; i += 32) {
      const __m512i raw = _mm512_loadu_si512(w + i);
      const __m512 we = _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
      const __m512 wo = _mm512_castsi512_ps(_mm512_and_si512(raw, high));
      for (int b = 0; b < NB; ++b) {
        even[b] = _mm512_fmadd_ps(we, _mm512_loadu_ps(xs[b] + i), even[b]);
        odd[b] = _mm512_fmadd_ps(wo, _mm512_loadu_ps(xs[b] + i + 16), odd[b]);
      }
    }
    for (int b = 0; b < NB; ++b) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(even[b], odd[b]));
      for (int64_t i = full; i < cols; ++i) s += bf16_to_float(w[i].bits) * xs[b][i];
      j.y[(b0 + b) * j.ldy + o] = s;
    }
  }
}

void rows_bf16_pairs(const Job& j, int64_t r0, int64_t r1, int64_t B) {
  in_groups_of_4(B, [&](auto nb, int64_t b0) { dot_rows_bf16_pairs<decltype(nb)::value>(j, r0, r1, b0); });
}
#endif

#if defined(WKV_STEP_VNNI)
bool cpu_has_vnni() {
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw");
  }();
  return has;
}
#endif

template <class L, class W>
inline typename L::V load_w(const W* p) {
  if constexpr (std::is_same_v<W, int8_t>) {
    return load_i8(p);
  } else {
    return L::load(p);
  }
}

template <class W>
inline float scalar_w(const W* p) {
  if constexpr (std::is_same_v<W, float>) {
    return *p;
  } else if constexpr (std::is_same_v<W, Bf16>) {
    return bf16_to_float(p->bits);
  } else if constexpr (std::is_same_v<W, Half16>) {
    return half_to_float(p->bits);
  } else {
    return float(*p);
  }
}

// Rows [r0, r1) of one job, for batch rows [b0, b0 + nb), nb <= 4.
template <class L, class W, int NB>
void dot_rows(const Job& j, int64_t r0, int64_t r1, int64_t b0) {
  using V = typename L::V;
  constexpr int64_t Wd = L::W;
  const int64_t cols = j.m->cols;
  const int64_t main = cols / (2 * Wd) * (2 * Wd);
  const W* base = static_cast<const W*>(j.m->w);
  const float* xs[NB];
  for (int b = 0; b < NB; ++b) xs[b] = j.x + (b0 + b) * j.ldx;
  for (int64_t o = r0; o < r1; ++o) {
    const W* w = base + o * cols;
    V acc0[NB], acc1[NB];
    for (int b = 0; b < NB; ++b) acc0[b] = acc1[b] = V(0.0f);
    for (int64_t i = 0; i < main; i += 2 * Wd) {
      const V w0 = load_w<L>(w + i), w1 = load_w<L>(w + i + Wd);
      for (int b = 0; b < NB; ++b) {
        acc0[b] = wkv_fma(w0, L::load(xs[b] + i), acc0[b]);
        acc1[b] = wkv_fma(w1, L::load(xs[b] + i + Wd), acc1[b]);
      }
    }
    const float scale = j.m->format == Format::I8 ? j.m->scale[o] : 1.0f;
    for (int b = 0; b < NB; ++b) {
      float s = wkv_hsum(acc0[b] + acc1[b]);
      for (int64_t i = main; i < cols; ++i) s += scalar_w(w + i) * xs[b][i];
      j.y[(b0 + b) * j.ldy + o] = s * scale;
    }
  }
}

// Rows [r0, r1) of a Q4 job in float32 for batch rows [b0, b0 + NB) (any lane; the VNNI path's
// fallback): each block of 64 weights unpacked to floats once, then dotted with every row's inputs.
template <class L, int NB>
void dot_rows_q4(const Job& j, int64_t r0, int64_t r1, int64_t b0) {
  constexpr int64_t Wd = L::W;
  const int64_t cols = j.m->cols, nblk = (cols + 63) / 64;
  const int64_t row_bytes = wkv::step::q4_row_bytes(cols), row_scales = wkv::step::q4_row_scales(cols);
  alignas(64) float wf[64];
  for (int64_t o = r0; o < r1; ++o) {
    const uint8_t* w = static_cast<const uint8_t*>(j.m->w) + o * row_bytes;
    const float* ws = j.m->scale + o * row_scales;
    float sums[NB] = {};
    for (int64_t blk = 0; blk < nblk; ++blk) {
      const uint8_t* p = w + blk * 32;
      for (int i = 0; i < 32; ++i) {
        wf[i] = float(int(p[i] & 0x0F) - 8) * ws[2 * blk];
        wf[32 + i] = float(int(p[i] >> 4) - 8) * ws[2 * blk + 1];
      }
      const int64_t k0 = blk * 64, n = std::min<int64_t>(64, cols - k0);
      for (int b = 0; b < NB; ++b) {
        const float* x = j.x + (b0 + b) * j.ldx + k0;
        float s = 0.0f;
        int64_t i = 0;
        if (n == 64) {
          typename L::V acc = typename L::V(0.0f);
          for (; i < 64; i += Wd) acc = wkv_fma(L::load(wf + i), L::load(x + i), acc);
          s = wkv_hsum(acc);
        }
        for (; i < n; ++i) s += wf[i] * x[i];  // (the padded last block: its real inputs only)
        sums[b] += s;
      }
    }
    for (int b = 0; b < NB; ++b) j.y[(b0 + b) * j.ldy + o] = sums[b];
  }
}

template <class L, class W>
void job_rows(const Job& j, int64_t r0, int64_t r1, int64_t B) {
  in_groups_of_4(B, [&](auto nb, int64_t b0) { dot_rows<L, W, decltype(nb)::value>(j, r0, r1, b0); });
}

template <class L>
void run_rows(const Job& j, int64_t r0, int64_t r1, int64_t B) {
  switch (j.m->format) {
    case Format::F32: job_rows<L, float>(j, r0, r1, B); break;
    case Format::BF16:
#if defined(WKV_STEP_BF16_PAIRS)
      if (j.xp != nullptr) {
        rows_bf16_pairs(j, r0, r1, B);
        break;
      }
#endif
      job_rows<L, Bf16>(j, r0, r1, B);
      break;
    case Format::F16: job_rows<L, Half16>(j, r0, r1, B); break;
    case Format::I8:
#if defined(WKV_STEP_VNNI)
      if (j.xq != nullptr) {
        rows_vnni<false>(j, r0, r1, B);
        break;
      }
#endif
      job_rows<L, int8_t>(j, r0, r1, B);
      break;
    case Format::Q4:
#if defined(WKV_STEP_VNNI)
      if (j.xq != nullptr) {
        rows_vnni<true>(j, r0, r1, B);
        break;
      }
#endif
      in_groups_of_4(B, [&](auto nb, int64_t b0) { dot_rows_q4<L, decltype(nb)::value>(j, r0, r1, b0); });
      break;
  }
}

// Bytes of one row of a matrix in its format.
inline int64_t row_bytes(const Matrix& m) {
  switch (m.format) {
    case Format::F32: return 4 * m.cols;
    case Format::BF16:
    case Format::F16: return 2 * m.cols;
    case Format::I8: return m.cols + 4;
    case Format::Q4: return wkv::step::q4_row_bytes(m.cols) + 4 * wkv::step::q4_row_scales(m.cols);
  }
  return 4 * m.cols;
}

// Products smaller than this (bytes of weights, all of a call's jobs) run on the calling thread:
// a parallel region costs more than they do. A chunk is about kChunkBytes of weights.
constexpr int64_t kGrainBytes = 32 * 1024;
constexpr int64_t kChunkBytes = 48 * 1024;
constexpr int64_t kChunksPerThread = 4;

// Several products in one parallel region (common/parallel.h): their rows are one range, split
// in chunks of whole 16-row blocks (whole cache lines of the output) that threads take as they
// come.
template <class L>
void gemv_many(const Job* in, int n, int64_t B, int nthreads) {
  Job jobs[8];
  std::copy(in, in + n, jobs);
#if defined(WKV_STEP_VNNI)
  // (gemv_many runs on the calling thread, outside any parallel region: one buffer per thread,
  // grown once, serves every call)
  static thread_local std::vector<uint8_t> qbuf;
  static thread_local std::vector<float> sbuf;
  if (cpu_has_vnni()) {  // quantize the inputs of the int8 and 4-bit products, once per call
    int64_t qn = 0, sn = 0;
    for (int i = 0; i < n; ++i) {
      if (!quantized_inputs(jobs[i].m->format)) continue;
      const int64_t nblk = (jobs[i].m->cols + 63) / 64;
      qn += B * nblk * 64;
      sn += B * nblk;
    }
    if (qbuf.size() < size_t(qn)) qbuf.resize(size_t(qn));
    if (sbuf.size() < size_t(sn)) sbuf.resize(size_t(sn));
    int64_t qo = 0, so = 0;
    for (int i = 0; i < n; ++i) {
      if (!quantized_inputs(jobs[i].m->format)) continue;
      const int64_t cols = jobs[i].m->cols, nblk = (cols + 63) / 64;
      for (int64_t b = 0; b < B; ++b)
        quantize_blocks(jobs[i].x + b * jobs[i].ldx, cols, qbuf.data() + qo + b * nblk * 64,
                        sbuf.data() + so + b * nblk);
      jobs[i].xq = qbuf.data() + qo;
      jobs[i].xscale = sbuf.data() + so;
      qo += B * nblk * 64;
      so += B * nblk;
    }
  }
#endif
#if defined(WKV_STEP_BF16_PAIRS)
  static thread_local std::vector<float> pbuf;  // the bf16 products' de-interleaved inputs
  {
    int64_t pn = 0;
    for (int i = 0; i < n; ++i)
      if (jobs[i].m->format == Format::BF16) pn += B * jobs[i].m->cols;
    if (pbuf.size() < size_t(pn)) pbuf.resize(size_t(pn));
    int64_t po = 0;
    for (int i = 0; i < n; ++i) {
      if (jobs[i].m->format != Format::BF16) continue;
      const int64_t cols = jobs[i].m->cols;
      for (int64_t b = 0; b < B; ++b)
        deinterleave_pairs(jobs[i].x + b * jobs[i].ldx, cols, pbuf.data() + po + b * cols);
      jobs[i].xp = pbuf.data() + po;
      po += B * cols;
    }
  }
#endif
  int64_t starts[9];
  starts[0] = 0;
  int64_t bytes = 0;  // of weights, all the jobs together
  for (int i = 0; i < n; ++i) {
    starts[i + 1] = starts[i] + jobs[i].m->rows;
    bytes += jobs[i].m->rows * row_bytes(*jobs[i].m);
  }
  const int64_t total = starts[n];
  // Chunks of whole 16-row blocks, about kChunkBytes of weights each, at least kChunksPerThread
  // per thread (a thread the scheduler does not run leaves its share to the others).
  const int64_t blocks = (total + 15) / 16;
  const int threads = wkv::parallel::threads_for(bytes, kGrainBytes, nthreads);
  int64_t per_chunk = std::max<int64_t>(1, blocks);  // (one thread: one chunk)
  if (threads > 1) {
    per_chunk = std::max<int64_t>(1, kChunkBytes / std::max<int64_t>(1, bytes / blocks));
    per_chunk = std::min(per_chunk, std::max<int64_t>(1, blocks / (kChunksPerThread * threads)));
  }
  const int64_t chunks = (blocks + per_chunk - 1) / per_chunk;
  wkv::parallel::for_each_chunk(chunks, threads, [&](int64_t c, int) {
    int64_t r = c * per_chunk * 16;
    const int64_t end = std::min(total, (c + 1) * per_chunk * 16);
    while (r < end) {
      int i = 0;
      while (starts[i + 1] <= r) ++i;
      const int64_t stop = std::min(end, starts[i + 1]);
      run_rows<L>(jobs[i], r - starts[i], stop - starts[i], B);
      r = stop;
    }
  });
}

inline void layer_norm(const float* x, const float* w, const float* b, float eps, int64_t C, float* y) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t c = 0; c < C; ++c) sum += x[c];
  const float mean = sum / float(C);
  float var = 0.0f;
#pragma omp simd reduction(+ : var)
  for (int64_t c = 0; c < C; ++c) var += (x[c] - mean) * (x[c] - mean);
  const float rstd = 1.0f / std::sqrt(var / float(C) + eps);
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) y[c] = (x[c] - mean) * rstd * w[c] + b[c];
}

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// x += o over n floats (the residual adds).
inline void add_into(float* x, const float* o, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) x[i] += o[i];
}

// relu(k)^2 in place (both generations' channel mix).
inline void relu_square(float* k, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float t = std::max(k[i], 0.0f);
    k[i] = t * t;
  }
}

// The end of a step: ln_out of the residual stream x into `scratch`, then the head into logits.
template <class L, class Model>
void ln_out_and_head(const Model& m, const float* x, float* scratch, float* logits, int64_t B) {
  for (int64_t b = 0; b < B; ++b) layer_norm(x + b * m.C, m.ln_out_w, m.ln_out_b, m.eps_out, m.C, scratch + b * m.C);
  const Job head[1] = {{&m.head, scratch, m.C, logits, m.V}};
  gemv_many<L>(head, 1, B, m.nthreads);
}

// Token-shift mix as RWKV-4 writes it: x * mix + prev * (1 - mix).
inline void mix4(const float* x, const float* prev, const float* mix, int64_t C, float* out) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) out[c] = x[c] * mix[c] + prev[c] * (1.0f - mix[c]);
}

template <class L>
void rwkv4_step(const wkv::step::Rwkv4Model& m, float* x, float* state, float* logits, int64_t B) {
  const int64_t C = m.C, F = m.F, Lyr = m.L;
  // scratch, per batch row: ln output, mixed inputs, projections (C each), the ffn key (F) and receptance (C)
  std::vector<float> buf(size_t(B) * size_t(9 * C + F));
  float* xa = buf.data();    // (B, C) ln1 / ln2 output
  float* in0 = xa + B * C;   // (B, C) mixed inputs
  float* in1 = in0 + B * C;
  float* in2 = in1 + B * C;
  float* k = in2 + B * C;    // (B, C) projections
  float* v = k + B * C;
  float* r = v + B * C;
  float* o = r + B * C;      // (B, C) attention / value output
  float* kf = o + B * C;     // (B, F) ffn key
  float* rf = kf + B * F;    // (B, C) ffn receptance
  const int64_t S = 5 * C;   // one layer's state rows
  for (int64_t b = 0; b < B; ++b) layer_norm(x + b * C, m.ln0_w, m.ln0_b, m.eps, C, x + b * C);
  for (int64_t l = 0; l < Lyr; ++l) {
    const auto& ly = m.layers[l];
    // ---- time mix ----
    for (int64_t b = 0; b < B; ++b) {
      float* st = state + (b * Lyr + l) * S;
      float* xb = xa + b * C;
      layer_norm(x + b * C, ly.ln1_w, ly.ln1_b, m.eps, C, xb);
      mix4(xb, st, ly.att_mix_k, C, in0 + b * C);
      mix4(xb, st, ly.att_mix_v, C, in1 + b * C);
      mix4(xb, st, ly.att_mix_r, C, in2 + b * C);
      std::memcpy(st, xb, sizeof(float) * C);  // the next token's time-mix shift
    }
    const Job kvr[3] = {{&ly.att_key, in0, C, k, C}, {&ly.att_value, in1, C, v, C},
                        {&ly.att_receptance, in2, C, r, C}};
    gemv_many<L>(kvr, 3, B, m.nthreads);
    for (int64_t b = 0; b < B; ++b) {
      float* st = state + (b * Lyr + l) * S;
      float *aa = st + C, *bb = st + 2 * C, *pp = st + 3 * C;
      const float *kb = k + b * C, *vb = v + b * C, *rb = r + b * C;
      float* yb = in0 + b * C;  // sigmoid(r) * wkv
      for (int64_t c = 0; c < C; ++c) {
        // the WKV step with a shared exponent (docs/op.md): y from the state and this token,
        // then the state advanced by the decay w = -exp(time_decay)
        const float ww = ly.u[c] + kb[c];
        float p = std::max(pp[c], ww);
        float e1 = std::exp(pp[c] - p), e2 = std::exp(ww - p);
        const float y = (e1 * aa[c] + e2 * vb[c]) / (e1 * bb[c] + e2);
        const float wd = pp[c] + ly.w[c];
        p = std::max(wd, kb[c]);
        e1 = std::exp(wd - p);
        e2 = std::exp(kb[c] - p);
        aa[c] = e1 * aa[c] + e2 * vb[c];
        bb[c] = e1 * bb[c] + e2;
        pp[c] = p;
        yb[c] = sigmoid(rb[c]) * y;
      }
    }
    const Job out[1] = {{&ly.att_output, in0, C, o, C}};
    gemv_many<L>(out, 1, B, m.nthreads);
    add_into(x, o, B * C);
    // ---- channel mix ----
    for (int64_t b = 0; b < B; ++b) {
      float* st = state + (b * Lyr + l) * S + 4 * C;
      float* xb = xa + b * C;
      layer_norm(x + b * C, ly.ln2_w, ly.ln2_b, m.eps, C, xb);
      mix4(xb, st, ly.ffn_mix_k, C, in0 + b * C);
      mix4(xb, st, ly.ffn_mix_r, C, in1 + b * C);
      std::memcpy(st, xb, sizeof(float) * C);
    }
    const Job kr[2] = {{&ly.ffn_key, in0, C, kf, F}, {&ly.ffn_receptance, in1, C, rf, C}};
    gemv_many<L>(kr, 2, B, m.nthreads);
    relu_square(kf, B * F);
    const Job val[1] = {{&ly.ffn_value, kf, F, o, C}};
    gemv_many<L>(val, 1, B, m.nthreads);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t c = 0; c < C; ++c) x[b * C + c] += sigmoid(rf[b * C + c]) * o[b * C + c];
  }
  ln_out_and_head<L>(m, x, xa, logits, B);
}

// RWKV-7's token-shift mix: x + (prev - x) * mix.
inline void mix7(const float* x, const float* prev, const float* mix, int64_t C, float* out) {
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) out[c] = x[c] + (prev[c] - x[c]) * mix[c];
}

template <class L>
void rwkv7_step(const wkv::step::Rwkv7Model& m, float* x, float* state, float* logits, int64_t B) {
  const int64_t C = m.C, F = m.F, Lyr = m.L, N = m.N, H = C / N;
  const int64_t D = std::max({m.layers[0].w1t.rows, m.layers[0].a1t.rows, m.layers[0].v1t.rows,
                              m.layers[0].g1t.rows});
  const int64_t S = (2 + N) * C;  // one layer's state rows
  // scratch per batch row: the six mixed inputs, r k v, the low-rank hiddens and outputs, ...
  std::vector<float> buf(size_t(B) * size_t(16 * C + 4 * D + F));
  float* p = buf.data();
  auto take = [&](int64_t n) { float* q = p; p += B * n; return q; };
  float *xa = take(C), *xr = take(C), *xw = take(C), *xk = take(C), *xv = take(C), *xq = take(C), *xg = take(C);
  float *r = take(C), *k = take(C), *v = take(C), *vfirst = take(C), *w = take(C), *a = take(C), *g = take(C);
  float *y = take(C), *o = take(C);
  float *hw = take(D), *ha = take(D), *hv = take(D), *hg = take(D), *kf = take(F);
  for (int64_t b = 0; b < B; ++b) layer_norm(x + b * C, m.ln0_w, m.ln0_b, m.eps, C, x + b * C);
  for (int64_t l = 0; l < Lyr; ++l) {
    const auto& ly = m.layers[l];
    // ---- time mix: the mixes, then every product of them in one parallel region ----
    for (int64_t b = 0; b < B; ++b) {
      float* st = state + (b * Lyr + l) * S;
      float* xb = xa + b * C;
      layer_norm(x + b * C, ly.ln1_w, ly.ln1_b, m.eps, C, xb);
      mix7(xb, st, ly.x_r, C, xr + b * C);
      mix7(xb, st, ly.x_w, C, xw + b * C);
      mix7(xb, st, ly.x_k, C, xk + b * C);
      mix7(xb, st, ly.x_v, C, xv + b * C);
      mix7(xb, st, ly.x_a, C, xq + b * C);
      mix7(xb, st, ly.x_g, C, xg + b * C);
      std::memcpy(st, xb, sizeof(float) * C);  // the next token's time-mix shift
    }
    const Job first[7] = {{&ly.receptance, xr, C, r, C}, {&ly.key, xk, C, k, C},     {&ly.value, xv, C, v, C},
                          {&ly.w1t, xw, C, hw, D},       {&ly.a1t, xq, C, ha, D},    {&ly.g1t, xg, C, hg, D},
                          {&ly.v1t, xv, C, hv, D}};
    gemv_many<L>(first, l == 0 ? 6 : 7, B, m.nthreads);  // block 0 has no value residual
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < ly.w1t.rows; ++i) hw[b * D + i] = std::tanh(hw[b * D + i]);
      for (int64_t i = 0; i < ly.g1t.rows; ++i) hg[b * D + i] = sigmoid(hg[b * D + i]);
    }
    const Job second[4] = {{&ly.w2t, hw, D, w, C}, {&ly.a2t, ha, D, a, C}, {&ly.g2t, hg, D, g, C},
                           {&ly.v2t, hv, D, o, C}};
    gemv_many<L>(second, l == 0 ? 3 : 4, B, m.nthreads);
    for (int64_t b = 0; b < B; ++b) {
      float* st = state + (b * Lyr + l) * S;
      float *rb = r + b * C, *kb = k + b * C, *vb = v + b * C, *wb = w + b * C, *ab = a + b * C;
      float *yb = y + b * C, *vf = vfirst + b * C, *ob = o + b * C;
      if (l == 0) {
        std::memcpy(vf, vb, sizeof(float) * C);
      } else {
        for (int64_t c = 0; c < C; ++c) vb[c] += (vf[c] - vb[c]) * sigmoid(ly.v0[c] + ob[c]);
      }
      for (int64_t c = 0; c < C; ++c) {
        // w = -softplus(-(w0 + lora)) - 0.5, the decay d = exp(-exp(w)); a = sigmoid(a0 + lora)
        const float z = ly.w0[c] + wb[c];
        const float softplus = z < -20.0f ? -z : (z > 20.0f ? std::exp(-z) : std::log1p(std::exp(-z)));
        wb[c] = std::exp(-std::exp(-softplus - 0.5f));
        ab[c] = sigmoid(ly.a0[c] + ab[c]);
      }
      float* S0 = st + 2 * C;  // (H, N, N), S[i][j]: i the value index, j the key index
      for (int64_t h = 0; h < H; ++h) {
        const int64_t c0 = h * N;
        float *kk = xr + b * C + c0, *bb = xw + b * C + c0;  // (the mixes are spent: reused)
        float norm = 0.0f;
        for (int64_t j = 0; j < N; ++j) {
          kk[j] = kb[c0 + j] * ly.k_k[c0 + j];
          norm += kk[j] * kk[j];
        }
        const float inv = 1.0f / std::max(std::sqrt(norm), 1e-12f);  // F.normalize's eps
        float bonus = 0.0f;
        for (int64_t j = 0; j < N; ++j) {
          kk[j] *= inv;
          bb[j] = kk[j] * ab[c0 + j];
          kb[c0 + j] *= 1.0f + (ab[c0 + j] - 1.0f) * ly.k_a[c0 + j];
          bonus += rb[c0 + j] * kb[c0 + j] * ly.r_k[c0 + j];
        }
        float* Sh = S0 + h * N * N;
        for (int64_t i = 0; i < N; ++i) {
          float* Si = Sh + i * N;
          float sa = 0.0f;
#pragma omp simd reduction(+ : sa)
          for (int64_t j = 0; j < N; ++j) sa -= Si[j] * kk[j];  // S a with a = -kk
          const float vi = vb[c0 + i];
          float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
          for (int64_t j = 0; j < N; ++j) {
            Si[j] = Si[j] * wb[c0 + j] + sa * bb[j] + vi * kb[c0 + j];
            acc += Si[j] * rb[c0 + j];
          }
          yb[c0 + i] = acc;
        }
        // GroupNorm over the head (ln_x), then the bonus term (r . k . r_k) v
        float mean = 0.0f;
        for (int64_t i = 0; i < N; ++i) mean += yb[c0 + i];
        mean /= float(N);
        float var = 0.0f;
        for (int64_t i = 0; i < N; ++i) var += (yb[c0 + i] - mean) * (yb[c0 + i] - mean);
        const float rstd = 1.0f / std::sqrt(var / float(N) + m.eps_ln_x);
        for (int64_t i = 0; i < N; ++i) {
          const int64_t c = c0 + i;
          yb[c] = ((yb[c] - mean) * rstd * ly.ln_x_w[c] + ly.ln_x_b[c] + bonus * vb[c]) * g[b * C + c];
        }
      }
    }
    const Job out[1] = {{&ly.output, y, C, o, C}};
    gemv_many<L>(out, 1, B, m.nthreads);
    add_into(x, o, B * C);
    // ---- channel mix ----
    for (int64_t b = 0; b < B; ++b) {
      float* st = state + (b * Lyr + l) * S + C;
      float* xb = xa + b * C;
      layer_norm(x + b * C, ly.ln2_w, ly.ln2_b, m.eps, C, xb);
      mix7(xb, st, ly.ffn_x_k, C, xk + b * C);
      std::memcpy(st, xb, sizeof(float) * C);
    }
    const Job key[1] = {{&ly.ffn_key, xk, C, kf, F}};
    gemv_many<L>(key, 1, B, m.nthreads);
    relu_square(kf, B * F);
    const Job val[1] = {{&ly.ffn_value, kf, F, o, C}};
    gemv_many<L>(val, 1, B, m.nthreads);
    add_into(x, o, B * C);
  }
  ln_out_and_head<L>(m, x, xa, logits, B);
}

}  // namespace

#define WKV_DEFINE_STEP(isa, Lane)                                                                     \
  namespace wkv::step {                                                                                \
  void rwkv4_step_##isa(const Rwkv4Model& m, float* x, float* state, float* logits, int64_t B) {      \
    rwkv4_step<Lane>(m, x, state, logits, B);                                                          \
  }                                                                                                    \
  void rwkv7_step_##isa(const Rwkv7Model& m, float* x, float* state, float* logits, int64_t B) {      \
    rwkv7_step<Lane>(m, x, state, logits, B);                                                          \
  }                                                                                                    \
  }
