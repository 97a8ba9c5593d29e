// The RWKV-7 CPU kernels, forward and backward, generic over a lane policy L (vec_avx512.h,
// vec_avx2.h, or the scalar lane below) and compiled once per instruction set
// (wkv7_cpu_{scalar,avx2,avx512}.cpp) with raw pointers only, everything with internal linkage
// (as csrc/rwkv4/cpu/wkv_cpu_kernel.h: no AVX-512 code can leak to a machine without it).
//
// The math is rwkv7/wkv7.h's. Work split: a work item is one (batch row, head); threads take
// items through the one parallel-for (common/parallel.h). An item's state (N rows of N) lives
// in a 64-byte aligned scratch row-major, each row padded to a whole number of vectors with zero
// columns (which stay zero: their d, a, b, k are zero), so any N runs at full vector width. A
// step is one sweep over the state's rows: row i's vectors give sa_i and y_i (two horizontal
// sums) and are updated in place, all in L1.
//
// The backward is O(T) with no limit on T: it needs the state before every kCheckpointSteps-th
// step (the forward's checkpoints, or a forward pass writes them first: wkv7_cpu.cpp); from the
// last chunk to the first it recomputes the chunk's states S_{t-1} and sa_t into an L2-sized
// scratch and walks them backwards, one sweep over the rows per step.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "common/half_convert.h"
#include "common/parallel.h"
#include "wkv7_cpu_args.h"

namespace {

using wkv::v7::kCheckpointSteps;

// The scalar lane (float64, and the whole kernel in the scalar build).
template <class S>
struct Scalar7Lane {
  using V = S;
  static constexpr int64_t W = 1;
  static V load(const S* p) { return *p; }
  static void store(S* p, V x) { *p = x; }
  static V load(const Bf16* p) { return bf16_to_float(p->bits); }
  static V load(const Half16* p) { return half_to_float(p->bits); }
};
inline float wkv_fma(float a, float b, float c) { return a * b + c; }
inline double wkv_fma(double a, double b, double c) { return a * b + c; }
inline float wkv_hsum(float a) { return a; }
inline float wkv_exp(float x) { return std::exp(x); }
inline double wkv_exp(double x) { return std::exp(x); }
inline double wkv_hsum(double a) { return a; }

// One element of a sequence in the math type, and back.
template <class S>
S to_math(S x) { return x; }
inline float to_math(Bf16 x) { return bf16_to_float(x.bits); }
inline float to_math(Half16 x) { return half_to_float(x.bits); }
template <class S>
void from_math(S* p, S x) { *p = x; }
inline void from_math(Bf16* p, float x) { p->bits = float_to_bf16(x); }
inline void from_math(Half16* p, float x) { p->bits = float_to_half(x); }

// -dd/dw = d * exp(w) with its limit 0 where d underflowed (exp(w) may then be inf).
template <class S>
S decay_slope(S d, S e) { return d == S(0) ? S(0) : d * e; }

template <class S>
S* scratch_alloc(int64_t n) {
  const size_t bytes = ((size_t(n) * sizeof(S) + 63) / 64) * 64;
  return static_cast<S*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
}

inline int64_t padded(int64_t n, int64_t w) { return (n + w - 1) / w * w; }

// N elements of a step (contiguous) into a padded math-type vector (zeros after N).
template <class L, class S, class I>
void load_vec(const I* src, int64_t N, int64_t Np, S* dst) {
  int64_t j = 0;
  if constexpr (L::W > 1) {
    for (; j + L::W <= N; j += L::W) L::store(dst + j, L::load(src + j));
  }
  for (; j < N; ++j) dst[j] = to_math(src[j]);
  for (; j < Np; ++j) dst[j] = S(0);
}

template <class S, class I>
struct Item {
  int64_t b, h;
  int64_t seq(const wkv::v7::CpuArgs<S, I>& a, int64_t t) const {  // (b, t, h, 0)
    return ((b * a.T + t) * a.H + h) * a.N;
  }
};

// Copies an (N, N) state in and out of the padded (N, Np) layout.
template <class S>
void load_state(const S* src, int64_t N, int64_t Np, S* st) {
  for (int64_t i = 0; i < N; ++i) {
    S* row = st + i * Np;
    if (src) {
      std::memcpy(row, src + i * N, N * sizeof(S));
    } else {
      std::memset(row, 0, N * sizeof(S));
    }
    for (int64_t j = N; j < Np; ++j) row[j] = S(0);
  }
}
template <class S>
void store_state(const S* st, int64_t N, int64_t Np, S* dst) {
  for (int64_t i = 0; i < N; ++i) std::memcpy(dst + i * N, st + i * Np, N * sizeof(S));
}

// The step vectors of one t, padded: r, d, k, a, b, and e = exp(w).
template <class S>
struct StepVecs {
  S *r, *d, *k, *a, *b, *e;
  static int64_t size(int64_t Np) { return 6 * Np; }
  StepVecs(S* p, int64_t Np) : r(p), d(p + Np), k(p + 2 * Np), a(p + 3 * Np), b(p + 4 * Np), e(p + 5 * Np) {}
};

// The step's vectors; e = exp(w) and the decay d = exp(-e) (0 in the padding).
template <class L, class S, class I>
void load_step(const wkv::v7::CpuArgs<S, I>& a, int64_t off, int64_t Np, StepVecs<S>& s) {
  const int64_t N = a.N;
  load_vec<L>(a.r + off, N, Np, s.r);
  load_vec<L>(a.k + off, N, Np, s.k);
  load_vec<L>(a.a + off, N, Np, s.a);
  load_vec<L>(a.b + off, N, Np, s.b);
  load_vec<L>(a.w + off, N, Np, s.e);
  for (int64_t j = 0; j < Np; j += L::W) {
    const typename L::V e = wkv_exp(L::load(s.e + j));
    L::store(s.e + j, e);
    L::store(s.d + j, wkv_exp(-e));
  }
  for (int64_t j = N; j < Np; ++j) s.d[j] = S(0);
}

// Rows per block of a sweep: their vectors share each load of the step's vectors (and, in the
// backward, of the column accumulators), and their horizontal sums run side by side.
constexpr int kRows = 4;

// Rows [i0, i0 + R) of one step of the backward's recompute (see recompute_step).
template <class L, int R, class S, class I>
inline void recompute_rows(const wkv::v7::CpuArgs<S, I>& a, int64_t off, int64_t Np, const StepVecs<S>& s,
                           const S* src, S* dst, S* sa_out, int64_t i0) {
  using V = typename L::V;
  V asa[R];
  for (int q = 0; q < R; ++q) asa[q] = V(S(0));
  for (int64_t j = 0; j < Np; j += L::W) {
    const V va = L::load(s.a + j);
    for (int q = 0; q < R; ++q) asa[q] = wkv_fma(L::load(src + (i0 + q) * Np + j), va, asa[q]);
  }
  V vsa[R], vv[R];
  for (int q = 0; q < R; ++q) {
    const S sa = wkv_hsum(asa[q]);
    sa_out[i0 + q] = sa;
    vsa[q] = V(sa);
    vv[q] = V(to_math(a.v[off + i0 + q]));
  }
  if (!dst) return;
  for (int64_t j = 0; j < Np; j += L::W) {
    const V vd = L::load(s.d + j), vb = L::load(s.b + j), vk = L::load(s.k + j);
    for (int q = 0; q < R; ++q) {
      const V p = L::load(src + (i0 + q) * Np + j);
      L::store(dst + (i0 + q) * Np + j, wkv_fma(vv[q], vk, wkv_fma(vsa[q], vb, p * vd)));
    }
  }
}

// One step of the backward's recompute over the rows of the (row-major) state: sa_t into
// sa_out, and S_t into dst (none: the chunk's last step, whose S_t is not needed).
template <class L, class S, class I>
void recompute_step(const wkv::v7::CpuArgs<S, I>& a, int64_t off, int64_t Np, const StepVecs<S>& s,
                    const S* src, S* dst, S* sa_out) {
  const int64_t N = a.N;
  int64_t i = 0;
  for (; i + kRows <= N; i += kRows) recompute_rows<L, kRows>(a, off, Np, s, src, dst, sa_out, i);
  for (; i < N; ++i) recompute_rows<L, 1>(a, off, Np, s, src, dst, sa_out, i);
}

// The forward of one item keeps the state transposed, column j (key channel) as a vector over
// i (value index, padded to Np): sa = sum_j S[:, j] a_j and y = sum_j S_t[:, j] r_j are then
// vector sums with broadcast scalars, no horizontal sums (the backward, whose sums run the other
// way too, keeps rows). Rows are swept in blocks of up to kBlock vectors, the block's sa, y and
// v in registers: one pass over the block's columns for sa, one to update them and form y.
constexpr int kBlock = 4;

template <class S>
void load_state_t(const S* src, int64_t N, int64_t Np, S* stT) {  // (N, N) row-major -> columns
  for (int64_t j = 0; j < N; ++j) {
    S* col = stT + j * Np;
    for (int64_t i = 0; i < N; ++i) col[i] = src ? src[i * N + j] : S(0);
    for (int64_t i = N; i < Np; ++i) col[i] = S(0);
  }
}
template <class S>
void store_state_t(const S* stT, int64_t N, int64_t Np, S* dst) {
  for (int64_t i = 0; i < N; ++i) {
    for (int64_t j = 0; j < N; ++j) dst[i * N + j] = stT[j * Np + i];
  }
}

// Rows [i0, i0 + R W) of one forward step on the transposed state. vs: v_t padded; ys: y_t out.
template <class L, int R, class S>
inline void forward_block(int64_t N, int64_t Np, const StepVecs<S>& s, const S* vs, S* stT, S* ys,
                          int64_t i0) {
  using V = typename L::V;
  V sa[R], y[R], v[R];
  for (int q = 0; q < R; ++q) {
    sa[q] = y[q] = V(S(0));
    v[q] = L::load(vs + i0 + q * L::W);
  }
  for (int64_t j = 0; j < N; ++j) {
    const V aj(s.a[j]);
    const S* col = stT + j * Np + i0;
    for (int q = 0; q < R; ++q) sa[q] = wkv_fma(L::load(col + q * L::W), aj, sa[q]);
  }
  for (int64_t j = 0; j < N; ++j) {
    const V dj(s.d[j]), bj(s.b[j]), kj(s.k[j]), rj(s.r[j]);
    S* col = stT + j * Np + i0;
    for (int q = 0; q < R; ++q) {
      const V x = wkv_fma(v[q], kj, wkv_fma(sa[q], bj, L::load(col + q * L::W) * dj));
      L::store(col + q * L::W, x);
      y[q] = wkv_fma(x, rj, y[q]);
    }
  }
  for (int q = 0; q < R; ++q) L::store(ys + i0 + q * L::W, y[q]);
}

// The forward of one item: y (if a.y), the final state (if a.state_out), the checkpoints (if
// a.checkpoints). scratch: N * Np + StepVecs::size(Np) + 2 Np.
template <class L, class S, class I>
void forward_item(const wkv::v7::CpuArgs<S, I>& a, int64_t item, S* scratch) {
  const int64_t N = a.N, NN = N * N, Np = padded(N, L::W), nvec = Np / L::W;
  const Item<S, I> it{item / a.H, item % a.H};
  S* stT = scratch;
  StepVecs<S> s(scratch + N * Np, Np);
  S* vs = scratch + N * Np + StepVecs<S>::size(Np);
  S* ys = vs + Np;
  load_state_t(a.state_in ? a.state_in + item * NN : nullptr, N, Np, stT);
  const int64_t nckpt = wkv::v7::num_checkpoints(a.T);
  for (int64_t t = 0; t < a.T; ++t) {
    if (a.checkpoints && t % kCheckpointSteps == 0) {
      store_state_t(stT, N, Np, a.checkpoints + (item * nckpt + t / kCheckpointSteps) * NN);
    }
    const int64_t off = it.seq(a, t);
    load_step<L>(a, off, Np, s);
    load_vec<L>(a.v + off, N, Np, vs);
    int64_t q = 0;
    for (; q + kBlock <= nvec; q += kBlock) forward_block<L, kBlock>(N, Np, s, vs, stT, ys, q * L::W);
    switch (nvec - q) {
      case 3: forward_block<L, 3>(N, Np, s, vs, stT, ys, q * L::W); break;
      case 2: forward_block<L, 2>(N, Np, s, vs, stT, ys, q * L::W); break;
      case 1: forward_block<L, 1>(N, Np, s, vs, stT, ys, q * L::W); break;
      default: break;
    }
    if (a.y) {
      for (int64_t i = 0; i < N; ++i) from_math(a.y + off + i, ys[i]);
    }
  }
  if (a.state_out) store_state_t(stT, N, Np, a.state_out + item * NN);
}

// What backward_rows reads and accumulates: H (dL/dS_t, becomes G and then dL/dS_{t-1}), the
// states S_{t-1}, sa_t, gy_t, v_t, and the five column accumulators (S^T gy, G^T v, G^T sa,
// sum_i G * S_{t-1}, S_{t-1}^T gsa), each Np long.
template <class S>
struct BackRows {
  S* hs;
  const S *prev, *sa, *gy, *v;
  S* acc;
};

// Rows [i0, i0 + R) of one backward step: G = H + gy r^T, gv_i = G k, gsa_i = G b (written /
// kept), the column accumulators, and H's rows for step t - 1.
template <class L, int R, class S, class I>
inline void backward_rows(const wkv::v7::CpuArgs<S, I>& a, int64_t off, int64_t Np, const StepVecs<S>& s,
                          const BackRows<S>& w, int64_t i0) {
  using V = typename L::V;
  V vgy[R], agv[R], agsa[R];
  for (int q = 0; q < R; ++q) {
    vgy[q] = V(w.gy[i0 + q]);
    agv[q] = agsa[q] = V(S(0));
  }
  for (int64_t j = 0; j < Np; j += L::W) {
    const V vr = L::load(s.r + j), vk = L::load(s.k + j), vb = L::load(s.b + j);
    for (int q = 0; q < R; ++q) {
      S* h = w.hs + (i0 + q) * Np + j;
      const V g = wkv_fma(vgy[q], vr, L::load(h));
      L::store(h, g);
      agv[q] = wkv_fma(g, vk, agv[q]);
      agsa[q] = wkv_fma(g, vb, agsa[q]);
    }
  }
  V vgsa[R], vv[R], vsa[R];
  for (int q = 0; q < R; ++q) {
    from_math(a.gv + off + i0 + q, wkv_hsum(agv[q]));
    vgsa[q] = V(wkv_hsum(agsa[q]));
    vv[q] = V(w.v[i0 + q]);
    vsa[q] = V(w.sa[i0 + q]);
  }
  S *q_ = w.acc, *gk = w.acc + Np, *gb = w.acc + 2 * Np, *gd = w.acc + 3 * Np, *ga = w.acc + 4 * Np;
  for (int64_t j = 0; j < Np; j += L::W) {
    const V vd = L::load(s.d + j), va = L::load(s.a + j);
    V aq = L::load(q_ + j), agk = L::load(gk + j), agb = L::load(gb + j), agd = L::load(gd + j),
      aga = L::load(ga + j);
    for (int q = 0; q < R; ++q) {
      S* h = w.hs + (i0 + q) * Np + j;
      const V g = L::load(h), p = L::load(w.prev + (i0 + q) * Np + j);
      aq = wkv_fma(p, vgy[q], aq);
      agk = wkv_fma(g, vv[q], agk);
      agb = wkv_fma(g, vsa[q], agb);
      agd = wkv_fma(g, p, agd);
      aga = wkv_fma(p, vgsa[q], aga);
      L::store(h, wkv_fma(vgsa[q], va, g * vd));
    }
    L::store(q_ + j, aq);
    L::store(gk + j, agk);
    L::store(gb + j, agb);
    L::store(gd + j, agd);
    L::store(ga + j, aga);
  }
}

// The backward's scratch: H (N x Np), the chunk's states (chunk x N x Np) and sa (chunk x N),
// step vectors, the five column accumulators (5 Np), and the per-row scalars gy, v (2 N).
// Allocated once per thread (a fresh allocation per item would fault its pages in every time).
inline int64_t backward_scratch(int64_t T, int64_t N, int64_t Np) {
  const int64_t chunk = T < kCheckpointSteps ? T : kCheckpointSteps;
  return N * Np + chunk * N * Np + chunk * N + StepVecs<float>::size(Np) + 5 * Np + 2 * N;
}

// The backward of one item (checkpoints required).
template <class L, class S, class I>
void backward_item(const wkv::v7::CpuArgs<S, I>& a, int64_t item, S* scratch) {
  const int64_t N = a.N, NN = N * N, Np = padded(N, L::W), K = kCheckpointSteps;
  const int64_t chunk = a.T < K ? a.T : K;
  const int64_t n_states = chunk * N * Np;
  S* hs = scratch;
  S* states = hs + N * Np;
  S* sas = states + n_states;
  StepVecs<S> s(sas + chunk * N, Np);
  S* acc = sas + chunk * N + StepVecs<S>::size(Np);
  S *q = acc, *gk = acc + Np, *gb = acc + 2 * Np, *gd = acc + 3 * Np, *ga = acc + 4 * Np;
  S* gys = acc + 5 * Np;
  S* vs = gys + N;
  const Item<S, I> it{item / a.H, item % a.H};
  const int64_t nckpt = wkv::v7::num_checkpoints(a.T);
  load_state(a.gstate_out ? a.gstate_out + item * NN : nullptr, N, Np, hs);

  for (int64_t c = nckpt - 1; c >= 0; --c) {
    const int64_t t0 = c * K, t1 = t0 + K < a.T ? t0 + K : a.T;
    // Recompute S_{t-1} (into states[t - t0]) and sa_t for the chunk.
    load_state(a.checkpoints + (item * nckpt + c) * NN, N, Np, states);
    for (int64_t t = t0; t < t1; ++t) {
      S* cur = states + (t - t0) * N * Np;
      const int64_t off = it.seq(a, t);
      load_step<L>(a, off, Np, s);
      recompute_step<L>(a, off, Np, s, cur, t + 1 < t1 ? cur + N * Np : nullptr, sas + (t - t0) * N);
    }
    // Walk the chunk backwards.
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const S* prev = states + (t - t0) * N * Np;
      const S* sa = sas + (t - t0) * N;
      const int64_t off = it.seq(a, t);
      load_step<L>(a, off, Np, s);
      S sa_gy = 0, v_gy = 0;
      for (int64_t i = 0; i < N; ++i) {
        gys[i] = to_math(a.gy[off + i]);
        vs[i] = to_math(a.v[off + i]);
        sa_gy += sa[i] * gys[i];
        v_gy += vs[i] * gys[i];
      }
      for (int64_t j = 0; j < 5 * Np; ++j) acc[j] = S(0);
      const BackRows<S> rows{hs, prev, sa, gys, vs, acc};
      int64_t i = 0;
      for (; i + kRows <= N; i += kRows) backward_rows<L, kRows>(a, off, Np, s, rows, i);
      for (; i < N; ++i) backward_rows<L, 1>(a, off, Np, s, rows, i);
      for (int64_t j = 0; j < N; ++j) {
        from_math(a.gr + off + j, s.d[j] * q[j] + s.b[j] * sa_gy + s.k[j] * v_gy);
        from_math(a.gk + off + j, gk[j]);
        from_math(a.gb + off + j, gb[j]);
        from_math(a.ga + off + j, ga[j]);
        from_math(a.gw + off + j, -gd[j] * decay_slope(s.d[j], s.e[j]));
      }
    }
  }
  if (a.gstate_in) store_state(hs, N, Np, a.gstate_in + item * NN);
}

// Below this many multiply-adds in all (T * N * N per item) a call runs on one thread: a
// parallel region (waking a worker) would cost more than the work.
constexpr int64_t kGrainFmas = 65536;

// Runs item_fn(item, scratch) for every (batch row, head) through the one parallel-for
// (common/parallel.h), with `scratch_size` elements of scratch per thread. Returns false if an
// allocation failed.
template <class S, class I, class ItemFn>
bool for_each_item(const wkv::v7::CpuArgs<S, I>& a, int64_t scratch_size, ItemFn item_fn) {
  const int64_t items = a.B * a.H;
  const int64_t per_item = a.T * a.N * a.N;
  const int threads = wkv::parallel::threads_for(items * per_item, kGrainFmas, a.nthreads);
  int failed = 0;  // (set with a relaxed atomic store by any chunk)
  S* scratch[wkv::parallel::kMaxThreads] = {};
  auto chunk = [&](int64_t i, int worker) {
    if (scratch_size > 0 && scratch[worker] == nullptr) {
      scratch[worker] = scratch_alloc<S>(scratch_size);  // (worker's own slot)
      if (scratch[worker] == nullptr) {
        __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
        return;
      }
    }
    if (!item_fn(i, scratch[worker])) __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
  };
  wkv::parallel::for_each_chunk(items, threads, chunk);
  for (S* p : scratch) std::free(p);
  return __atomic_load_n(&failed, __ATOMIC_RELAXED) == 0;
}

template <class L, class S, class I>
bool forward_all(const wkv::v7::CpuArgs<S, I>& a) {
  const int64_t Np = padded(a.N, L::W);
  return for_each_item(a, a.N * Np + StepVecs<S>::size(Np) + 2 * Np, [&](int64_t item, S* scratch) {
    forward_item<L>(a, item, scratch);
    return true;
  });
}

template <class L, class S, class I>
bool backward_all(const wkv::v7::CpuArgs<S, I>& a) {
  return for_each_item(a, backward_scratch(a.T, a.N, padded(a.N, L::W)), [&](int64_t item, S* scratch) {
    backward_item<L>(a, item, scratch);
    return true;
  });
}

}  // namespace

// Defines the exported entry pair of one translation unit (declared in wkv7_cpu_args.h).
#define WKV7_DEFINE_CPU_KERNELS(ISA, LANE, S, I)                                          \
  namespace wkv::v7 {                                                                     \
  bool forward_cpu_##ISA(const CpuArgs<S, I>& a) { return forward_all<LANE>(a); }         \
  bool backward_cpu_##ISA(const CpuArgs<S, I>& a) { return backward_all<LANE>(a); }       \
  }
