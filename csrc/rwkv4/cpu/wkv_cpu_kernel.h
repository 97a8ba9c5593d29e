// CPU driver for the WKV recurrence in csrc/rwkv4/wkv.h, generic over a lane policy.
//
// Compiled once per instruction set (wkv_cpu_{scalar,avx2,avx512}.cpp) with raw pointers only:
// no torch or standard-library templates are instantiated here, so nothing compiled with
// AVX-512 can leak into code that runs on a machine without it (std type traits, which emit no
// code, are the exception). Everything below has internal linkage (anonymous namespace); each
// translation unit exports a few plain entry functions (wkv_cpu_args.h). An allocation failure
// is reported by their return value (false), never by a crash.
//
// Work split (docs/performance.md, "The CPU kernel"): a work item is one batch row and a contiguous run of
// channels; time is the outer loop, channels the inner one, so the run's state stays in L1
// and k, v, y stream through memory in order. Threads take work items through the one
// parallel-for (common/parallel.h).
//
// Backward is O(T) with no limit on T: it needs the state at the start of every chunk of
// kCheckpointSteps steps (the forward's checkpoints when it saved them, else a first pass computes them);
// then, from the last chunk to the first, the chunk's states are recomputed into a small
// (L2-sized) buffer and the reverse recurrence walks it backwards.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "common/half_convert.h"
#include "common/parallel.h"
#include "rwkv4/wkv.h"
#include "wkv_cpu_args.h"

namespace {

// A scalar lane: the tail of a channel run (and the whole run in the scalar build).
template <class S>
struct ScalarLane {
  using V = S;
  static constexpr int64_t W = 1;
  static V load(const S* p) { return *p; }
  static void store(S* p, V x) { *p = x; }
  static V load(const Bf16* p) { return bf16_to_float(p->bits); }
  static V load(const Half16* p) { return half_to_float(p->bits); }
  static void store(Bf16* p, V x) { p->bits = float_to_bf16(x); }
  static void store(Half16* p, V x) { p->bits = float_to_half(x); }
  static constexpr int64_t kStreamAlign = 0;  // no streaming stores
  static void stream(S* p, V x) { *p = x; }
  static void fence() {}
};

template <class S>
S* scratch_alloc(int64_t n) {
  // 64-byte aligned, rounded up to a whole number of cache lines.
  const size_t bytes = ((size_t(n) * sizeof(S) + 63) / 64) * 64;
  return static_cast<S*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
}

// Loads the input state of one work item (or the empty state).
template <class S, class I>
void load_state(const wkv::CpuArgs<S, I>& a, int64_t b, int64_t c0, int64_t n, S* sa, S* sb,
                S* sp) {
  if (a.state_in) {
    const S* s = a.state_in + b * 3 * a.C + c0;
    std::memcpy(sa, s, n * sizeof(S));
    std::memcpy(sb, s + a.C, n * sizeof(S));
    std::memcpy(sp, s + 2 * a.C, n * sizeof(S));
  } else {
    for (int64_t j = 0; j < n; ++j) {
      sa[j] = S(0);
      sb[j] = S(0);
      sp[j] = S(wkv::kEmptyExponent);
    }
  }
}

template <class S>
void store_state(S* dst, int64_t C, int64_t b, int64_t c0, int64_t n, const S* sa, const S* sb,
                 const S* sp) {
  S* s = dst + b * 3 * C + c0;
  std::memcpy(s, sa, n * sizeof(S));
  std::memcpy(s + C, sb, n * sizeof(S));
  std::memcpy(s + 2 * C, sp, n * sizeof(S));
}

// Software prefetch of the same channels kPrefetchRows steps ahead: a run covers only part of
// each row, a pattern the hardware prefetchers follow poorly (measured: splitting a row across
// threads was slower than one thread without it).
constexpr int64_t kPrefetchRows = 4;
template <class S>
inline void prefetch_ahead(const S* k, const S* v, int64_t row_stride) {
  __builtin_prefetch(k + kPrefetchRows * row_stride);
  __builtin_prefetch(v + kPrefetchRows * row_stride);
}

// Streaming (non-temporal) stores for an output: only for large outputs (>= 1 MiB, which would
// not stay in L2 anyway) whose rows are aligned for the lane's vector stores.
// (float outputs only: 16-bit outputs use ordinary stores.)
template <class L, class S, class I>
bool can_stream(const wkv::CpuArgs<S, I>& a, const I* out, int64_t c0) {
  if constexpr (!std::is_same_v<I, float>) {
    return false;
  } else {
    return L::kStreamAlign > 0 && a.B * a.T * a.C * int64_t(sizeof(I)) >= (int64_t(1) << 20) &&
           reinterpret_cast<uintptr_t>(out + c0) % L::kStreamAlign == 0 &&
           (a.C * int64_t(sizeof(I))) % L::kStreamAlign == 0;
  }
}

// Runs the body over the channels [0, n) of a run, with `Lane` and `j` bound: full vectors of
// L, then the scalar tail.
#define WKV_FOR_LANES(n, ...)                                         \
  do {                                                                 \
    int64_t j = 0;                                                     \
    {                                                                  \
      using Lane = L;                                                  \
      for (; j + Lane::W <= (n); j += Lane::W) { __VA_ARGS__ }               \
    }                                                                  \
    {                                                                  \
      using Lane = ScalarLane<S>;                                      \
      for (; j < (n); ++j) { __VA_ARGS__ }                                    \
    }                                                                  \
  } while (0)

// Checkpoint spacing and backward chunk length (rwkv4/wkv.h: the CUDA kernels use the same
// checkpoints, so either backward can consume the other's forward).
using wkv::kCheckpointSteps;

template <class L, class S, class I>
void forward_item(const wkv::CpuArgs<S, I>& a, int64_t b, int64_t c0, int64_t n, S* scratch) {
  S* sa = scratch;
  S* sb = scratch + n;
  S* sp = scratch + 2 * n;
  load_state(a, b, c0, n, sa, sb, sp);
  const S* w = a.w + c0;
  const S* u = a.u + c0;
  // Non-temporal stores for y when every row of the run is aligned: no read-for-ownership of
  // lines, and no cache ping-pong where a neighbouring run (another thread) writes the rest of
  // the row.
  const bool stream_y = can_stream<L>(a, a.y, c0);
  const int64_t nckpt = (a.T + kCheckpointSteps - 1) / kCheckpointSteps;
  for (int64_t t = 0; t < a.T; ++t) {
    if (a.checkpoints && t % kCheckpointSteps == 0) {
      store_state(a.checkpoints, a.C, b * nckpt + t / kCheckpointSteps, c0, n, sa, sb, sp);
    }
    const int64_t off = (b * a.T + t) * a.C + c0;
    const I* kt = a.k + off;
    const I* vt = a.v + off;
    I* yt = a.y + off;
    WKV_FOR_LANES(n, {
      prefetch_ahead(kt + j, vt + j, a.C);
      using V = typename Lane::V;
      V aa = Lane::load(sa + j), bb = Lane::load(sb + j), pp = Lane::load(sp + j);
      const V y = wkv::forward_step(Lane::load(w + j), Lane::load(u + j), Lane::load(kt + j),
                                    Lane::load(vt + j), aa, bb, pp);
      if constexpr (std::is_same_v<I, float>) {
        if (stream_y) {
          Lane::stream(yt + j, y);
        } else {
          Lane::store(yt + j, y);
        }
      } else {
        Lane::store(yt + j, y);
      }
      Lane::store(sa + j, aa);
      Lane::store(sb + j, bb);
      Lane::store(sp + j, pp);
    });
  }
  if (a.state_out) store_state(a.state_out, a.C, b, c0, n, sa, sb, sp);
}

// Advances the states of a run over steps [t0, t1). If `trace` is given, stores for each step
// kTraceRows rows of n: the state before the step (aa, bb, pp) and its decay-branch weights
// (f1, f2), so the reverse pass needs one exp per step fewer.
constexpr int64_t kTraceRows = 5;

template <class L, class S, class I>
void advance_run(const wkv::CpuArgs<S, I>& a, int64_t b, int64_t c0, int64_t n, int64_t t0,
                 int64_t t1, S* sa, S* sb, S* sp, S* trace) {
  const S* w = a.w + c0;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t off = (b * a.T + t) * a.C + c0;
    const I* kt = a.k + off;
    const I* vt = a.v + off;
    S* tr = trace ? trace + (t - t0) * kTraceRows * n : nullptr;
    WKV_FOR_LANES(n, {
      prefetch_ahead(kt + j, vt + j, a.C);
      using V = typename Lane::V;
      V aa = Lane::load(sa + j), bb = Lane::load(sb + j), pp = Lane::load(sp + j);
      if (tr) {
        Lane::store(tr + j, aa);
        Lane::store(tr + n + j, bb);
        Lane::store(tr + 2 * n + j, pp);
        V f1, f2;
        wkv::advance_state(Lane::load(w + j), Lane::load(kt + j), Lane::load(vt + j), aa, bb, pp,
                           f1, f2);
        Lane::store(tr + 3 * n + j, f1);
        Lane::store(tr + 4 * n + j, f2);
      } else {
        wkv::advance_state(Lane::load(w + j), Lane::load(kt + j), Lane::load(vt + j), aa, bb, pp);
      }
      Lane::store(sa + j, aa);
      Lane::store(sb + j, bb);
      Lane::store(sp + j, pp);
    });
  }
}

template <class L, class S, class I>
bool backward_item(const wkv::CpuArgs<S, I>& a, int64_t b, int64_t c0, int64_t n) {
  const int64_t nchunks = (a.T + kCheckpointSteps - 1) / kCheckpointSteps;
  // Checkpoints saved by the forward ((B, nchunks, 3, C): rows C apart), or computed here by a
  // first pass into this item's scratch (rows n apart).
  const bool saved = a.checkpoints != nullptr;
  const int64_t own = saved ? 0 : nchunks * 3 * n;
  // [own checkpoints] | chunk trace | running state (3) | adjoints ga, gb, gcarry, gw, gu (5)
  S* scratch = scratch_alloc<S>(own + kCheckpointSteps * kTraceRows * n + 8 * n);
  if (scratch == nullptr) return false;
  const int64_t ck_row = saved ? a.C : n;
  auto checkpoint = [&](int64_t ch) -> S* {
    return saved ? a.checkpoints + (b * nchunks + ch) * 3 * a.C + c0 : scratch + ch * 3 * n;
  };
  S* trace = scratch + own;
  S* sa = trace + kCheckpointSteps * kTraceRows * n;
  S* sb = sa + n;
  S* sp = sb + n;
  S* ga = sp + n;
  S* gb = ga + n;
  S* gc = gb + n;
  S* gw = gc + n;
  S* gu = gw + n;

  if (!saved) {  // Pass 1: states at chunk starts.
    load_state(a, b, c0, n, sa, sb, sp);
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      S* ck = checkpoint(ch);
      std::memcpy(ck, sa, n * sizeof(S));
      std::memcpy(ck + n, sb, n * sizeof(S));
      std::memcpy(ck + 2 * n, sp, n * sizeof(S));
      const int64_t t1 = (ch + 1) * kCheckpointSteps < a.T ? (ch + 1) * kCheckpointSteps : a.T;
      if (ch + 1 < nchunks) {
        advance_run<L>(a, b, c0, n, ch * kCheckpointSteps, t1, sa, sb, sp, static_cast<S*>(nullptr));
      }
    }
  }

  const S* w = a.w + c0;
  const S* u = a.u + c0;
  const bool stream_g = can_stream<L>(a, a.gk, c0) && can_stream<L>(a, a.gv, c0);
  for (int64_t ch = nchunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * kCheckpointSteps;
    const int64_t t1 = t0 + kCheckpointSteps < a.T ? t0 + kCheckpointSteps : a.T;
    const S* ck = checkpoint(ch);
    std::memcpy(sa, ck, n * sizeof(S));
    std::memcpy(sb, ck + ck_row, n * sizeof(S));
    std::memcpy(sp, ck + 2 * ck_row, n * sizeof(S));
    advance_run<L>(a, b, c0, n, t0, t1, sa, sb, sp, trace);
    if (ch == nchunks - 1) {
      // (sa, sb) is now the returned state: seed the adjoints from its gradient.
      const S* gso = a.gstate_out ? a.gstate_out + b * 3 * a.C + c0 : nullptr;
      for (int64_t j = 0; j < n; ++j) {
        const S gaa = gso ? gso[j] : S(0);
        const S gbb = gso ? gso[a.C + j] : S(0);
        const S gpp = gso ? gso[2 * a.C + j] : S(0);
        wkv::backward_init(gaa, gbb, gpp, sa[j], sb[j], ga[j], gb[j], gc[j]);
        gw[j] = S(0);
        gu[j] = S(0);
      }
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t off = (b * a.T + t) * a.C + c0;
      const I* kt = a.k + off;
      const I* vt = a.v + off;
      const I* gyt = a.gy + off;
      I* gkt = a.gk + off;
      I* gvt = a.gv + off;
      const S* tr = trace + (t - t0) * kTraceRows * n;
      WKV_FOR_LANES(n, {
        prefetch_ahead(kt + j, vt + j, -a.C);  // walking backwards in t
        __builtin_prefetch(gyt + j - kPrefetchRows * a.C);
        using V = typename Lane::V;
        V a_ga = Lane::load(ga + j), a_gb = Lane::load(gb + j), a_gc = Lane::load(gc + j);
        V a_gw = Lane::load(gw + j), a_gu = Lane::load(gu + j);
        V gk, gv;
        wkv::backward_step(Lane::load(u + j), Lane::load(kt + j), Lane::load(vt + j),
                           Lane::load(gyt + j), Lane::load(tr + j), Lane::load(tr + n + j),
                           Lane::load(tr + 2 * n + j), Lane::load(tr + 3 * n + j),
                           Lane::load(tr + 4 * n + j), a_ga, a_gb, a_gc, a_gw, a_gu, gk, gv);
        if constexpr (std::is_same_v<I, float>) {
          if (stream_g) {
            Lane::stream(gkt + j, gk);
            Lane::stream(gvt + j, gv);
          } else {
            Lane::store(gkt + j, gk);
            Lane::store(gvt + j, gv);
          }
        } else {
          Lane::store(gkt + j, gk);
          Lane::store(gvt + j, gv);
        }
        Lane::store(ga + j, a_ga);
        Lane::store(gb + j, a_gb);
        Lane::store(gc + j, a_gc);
        Lane::store(gw + j, a_gw);
        Lane::store(gu + j, a_gu);
      });
    }
  }

  // Parameter gradients (accumulated per batch row, gw already times w) and state gradient.
  S* gw_out = a.gw + b * a.C + c0;
  S* gu_out = a.gu + b * a.C + c0;
  S* gsi = a.gstate_in ? a.gstate_in + b * 3 * a.C + c0 : nullptr;
  for (int64_t j = 0; j < n; ++j) {
    gw_out[j] += gw[j] * w[j];
    gu_out[j] += gu[j];
    if (gsi) {
      wkv::backward_finish(ga[j], gb[j], gc[j], checkpoint(0)[j], checkpoint(0)[ck_row + j],
                           gsi[j], gsi[a.C + j], gsi[2 * a.C + j]);
    }
  }
  std::free(scratch);
  return true;
}

#undef WKV_FOR_LANES

// Work items: (batch row, run of channels). Runs are as long as possible (whole rows: long
// contiguous runs keep the prefetchers busy), split only so that there are a few items per thread
// (a thread the scheduler does not run leaves its share to the others) and never below
// kMinRun channels; lengths are multiples of the vector width, so only the last run of a row has
// a scalar tail.
constexpr int64_t kMinRun = 64;
constexpr int64_t kItemsPerThread = 8;
// Below this many (t, channel) steps in all a call runs on one thread: about 10 µs of work per
// thread here, a few times what starting a region costs (waking a worker).
constexpr int64_t kGrainSteps = 16384;

inline int64_t channel_run(const int64_t B, const int64_t C, const int64_t nthreads,
                           const int64_t width) {
  if (nthreads <= 1) return C;
  int64_t splits = (kItemsPerThread * nthreads + B - 1) / B;
  if (splits < 1) splits = 1;
  int64_t run = (C + splits - 1) / splits;
  run = run > kMinRun ? run : kMinRun;
  run = ((run + width - 1) / width) * width;
  return run < C ? run : C;
}

// Runs item_fn(b, c0, n, scratch) for every work item (batch row x channel run) through the one
// parallel-for (common/parallel.h); `scratch_rows` rows of `run` elements of 64-byte aligned
// scratch per thread. Returns false if any allocation failed (item_fn returns false for its own).
template <class L, class S, class I, class ItemFn>
bool for_each_item(const wkv::CpuArgs<S, I>& a, int64_t scratch_rows, ItemFn item_fn) {
  const int threads = wkv::parallel::threads_for(a.B * a.T * a.C, kGrainSteps, a.nthreads);
  const int64_t run = channel_run(a.B, a.C, threads, L::W);
  const int64_t nruns = (a.C + run - 1) / run;
  const int64_t items = a.B * nruns;
  int failed = 0;  // (set with a relaxed atomic store by any chunk)
  S* scratch[wkv::parallel::kMaxThreads] = {};
  auto chunk = [&](int64_t i, int worker) {
    if (scratch_rows > 0 && scratch[worker] == nullptr) {
      scratch[worker] = scratch_alloc<S>(scratch_rows * run);  // (worker's own slot)
      if (scratch[worker] == nullptr) {
        __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
        return;
      }
    }
    const int64_t b = i / nruns;
    const int64_t c0 = (i % nruns) * run;
    const int64_t n = c0 + run <= a.C ? run : a.C - c0;
    if (!item_fn(b, c0, n, scratch[worker])) __atomic_store_n(&failed, 1, __ATOMIC_RELAXED);
    L::fence();  // streaming stores are ordered per thread: done before the chunk is counted
  };
  wkv::parallel::for_each_chunk(items, threads, chunk);
  for (S* p : scratch) std::free(p);
  return __atomic_load_n(&failed, __ATOMIC_RELAXED) == 0;
}

template <class L, class S, class I>
bool forward_all(const wkv::CpuArgs<S, I>& a) {
  return for_each_item<L>(a, 3, [&](int64_t b, int64_t c0, int64_t n, S* scratch) {
    forward_item<L>(a, b, c0, n, scratch);
    return true;
  });
}

template <class L, class S, class I>
bool backward_all(const wkv::CpuArgs<S, I>& a) {
  // backward_item allocates its own scratch: its size depends on T
  return for_each_item<L>(a, 0, [&](int64_t b, int64_t c0, int64_t n, S*) {
    return backward_item<L>(a, b, c0, n);
  });
}

}  // namespace

// Defines the exported entry pair of one translation unit (declared in wkv_cpu_args.h).
#define WKV_DEFINE_CPU_KERNELS(ISA, LANE, S, I)                                         \
  namespace wkv {                                                                       \
  bool forward_cpu_##ISA(const CpuArgs<S, I>& a) { return forward_all<LANE>(a); }       \
  bool backward_cpu_##ISA(const CpuArgs<S, I>& a) { return backward_all<LANE>(a); }     \
  }
