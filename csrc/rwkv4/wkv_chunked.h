// The CUDA kernels' bodies: one function per pass, of (thread index, arguments), runnable on a
// GPU (csrc/rwkv4/wkv_kernel.cu wraps each in a one-line __global__) and on the CPU (csrc/rwkv4/cpu/
// wkv_emulate.cpp loops over the whole grid), so the chunk arithmetic and all indexing are
// tested on machines without a GPU. The math is csrc/rwkv4/wkv.h; this file only says who computes
// which steps. The driver that picks passes and allocates buffers is csrc/rwkv4/wkv_cuda_driver.h.
//
// A "lane" is one (batch row b, channel c). T is cut into chunks of `chunk` steps (a multiple
// of kCheckpointSteps; chunk >= T means one chunk: the serial kernel, one thread per lane).
// Thread indices of per-chunk passes are ((b * nchunks + j) * C + c): neighbouring threads are
// neighbouring channels, so every load and store of a warp is coalesced.
//
// Forward (several chunks)              Backward (checkpoints from the forward, or recomputed)
//   fwd_fold   (b, j, c): chunk j from    bwd_local  (b, j>=1, c): chunk j walked backwards
//              the empty state -> starts             from zero adjoints -> its linear map
//   fwd_scan   (b, c): chunk start states bwd_scan   (b, c): adjoints at every chunk's end
//              in order -> starts, state_out          from the seed (gstate_out), last to first
//   fwd_emit   (b, j, c): chunk j from    bwd_emit   (b, j, c): chunk j backwards from its end
//              its start: y, checkpoints             adjoint: gk, gv, per-chunk gw, gu; gstate_in
// One chunk: fwd_emit alone (state_in ->  bwd_reduce (c) or (b, c): gw, gu summed over chunks
//   state_out); bwd_emit + bwd_reduce.                (and rows), times w for the time_decay grad
//
// Within a chunk every thread walks segments of kCheckpointSteps steps; the backward recomputes
// a segment's states from its checkpoint into a per-thread array of kCheckpointSteps entries
// (registers when the compiler unrolls the fixed-length loops) and walks it backwards. So no
// pass needs memory proportional to T beyond its outputs and the checkpoints.
#pragma once

#include <cstdint>
#include <type_traits>

#include "wkv.h"
#include "wkv_io.h"

namespace wkv {

// The inner loops take their sequences as __restrict__ parameters: then (also after inlining)
// the compiler may load step t+1's k, v before storing step t's output, which it must not
// assume for plain pointers that could alias.
#define WKV_RESTRICT __restrict__

template <class S>
struct LaneState {
  S aa, bb, pp;
};

// Element (row, part, c) of a (rows, parts, C) array: states are (B * n, 3, C), etc.
WKV_HD int64_t at3(int64_t row, int parts, int part, int64_t C, int64_t c) {
  return (row * parts + part) * C + c;
}

template <class S>
WKV_HD LaneState<S> load_lane_state(const S* p, int64_t row, int64_t C, int64_t c) {
  return {p[at3(row, 3, 0, C, c)], p[at3(row, 3, 1, C, c)], p[at3(row, 3, 2, C, c)]};
}

template <class S>
WKV_HD void store_lane_state(S* p, int64_t row, int64_t C, int64_t c, const LaneState<S>& s) {
  p[at3(row, 3, 0, C, c)] = s.aa;
  p[at3(row, 3, 1, C, c)] = s.bb;
  p[at3(row, 3, 2, C, c)] = s.pp;
}

template <class S>
WKV_HD LaneState<S> empty_lane_state() {
  return {S(0), S(0), S(kEmptyExponent)};
}

// Arguments shared by every pass. TIn: the sequences' type (float, double, c10::BFloat16,
// c10::Half); S: the math type (float, or double for double sequences).
template <class TIn, class S>
struct ScanArgs : WkvIo<const S*, S*, const TIn*, TIn*> {
  int64_t chunk = 0, nchunks = 1, nckpt = 0;  // nckpt = ceil(T / kCheckpointSteps)
  bool w_is_log = false;  // w holds time_decay (w = -exp(it) is formed here)
  bool sum_rows = false;  // the reduce pass: gw, gu (C,) summed over rows, else (B, C) +=
  // (y may be null: only the checkpoints wanted)
  S* starts = nullptr;   // (B, nchunks, 3, C): chunk folds, then chunk start states
  S* local = nullptr;    // (B, nchunks, 4, C): ga_loc, gb_loc, decay, keep
  S* adjoint = nullptr;  // (B, nchunks, 3, C): ga, gb, gcarry at each chunk's end
  S* parts = nullptr;    // (B, nchunks, 2, C): sum over the chunk of dL/dw, dL/du
};

template <class TIn, class S>
WKV_HD S decay_of(const ScanArgs<TIn, S>& a, int64_t c) {
  return a.w_is_log ? -wkv_exp(a.w[c]) : a.w[c];
}

// A read of k, v or gy: read-only for the whole kernel, so on the GPU it goes through the
// non-coherent (read-only) path, which also lets the compiler move it ahead of stores.
template <class TIn, class S>
WKV_HD S load_in(const TIn* p, int64_t off) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<TIn, float> || std::is_same_v<TIn, double>) {
    return static_cast<S>(__ldg(p + off));
  } else {  // c10::BFloat16 / c10::Half: the 16 bits, then torch's own conversion
    const unsigned short bits = __ldg(reinterpret_cast<const unsigned short*>(p + off));
    return static_cast<S>(TIn(bits, TIn::from_bits()));
  }
#else
  return static_cast<S>(p[off]);
#endif
}

// (b, j, c) of a per-chunk thread index.
struct ChunkLane {
  int64_t b, j, c;
};
template <class TIn, class S>
WKV_HD ChunkLane chunk_lane(int64_t i, const ScanArgs<TIn, S>& a) {
  const int64_t c = i % a.C, r = i / a.C;
  return {r / a.nchunks, r % a.nchunks, c};
}

template <class TIn, class S>
WKV_HD int64_t chunk_end(const ScanArgs<TIn, S>& a, int64_t j) {
  const int64_t t1 = (j + 1) * a.chunk;
  return t1 < a.T ? t1 : a.T;
}

// The state of lane (b, c) entering step 0.
template <class TIn, class S>
WKV_HD LaneState<S> initial_state(const ScanArgs<TIn, S>& a, int64_t b, int64_t c) {
  return a.state_in ? load_lane_state(a.state_in, b, a.C, c) : empty_lane_state<S>();
}

// ---- forward ---------------------------------------------------------------------------------

// n (<= kCheckpointSteps) steps from the state s, writing y if given (else only advancing: u is unused);
// in-segment offsets are 32-bit.
template <class TIn, class S>
WKV_HD void emit_segment(S w, S u, const TIn* WKV_RESTRICT k, const TIn* WKV_RESTRICT v,
                         TIn* WKV_RESTRICT y, int C, int n, LaneState<S>& s) {
  if (y) {
#if defined(__CUDA_ARCH__)
#pragma unroll 4
#endif
    for (int t = 0; t < n; ++t) {
      const int o = t * C;
      y[o] = static_cast<TIn>(forward_step(w, u, load_in<TIn, S>(k, o), load_in<TIn, S>(v, o), s.aa,
                                           s.bb, s.pp));
    }
  } else {
    for (int t = 0; t < n; ++t) {
      const int o = t * C;
      advance_state(w, load_in<TIn, S>(k, o), load_in<TIn, S>(v, o), s.aa, s.bb, s.pp);
    }
  }
}

struct FwdFold {
  template <class TIn, class S>
  WKV_HD void run(int64_t i, const ScanArgs<TIn, S>& a) {
    const ChunkLane l = chunk_lane(i, a);
    const S w = decay_of(a, l.c);
    LaneState<S> s = empty_lane_state<S>();
    const int64_t t1 = chunk_end(a, l.j);
    for (int64_t s0 = l.j * a.chunk; s0 < t1; s0 += kCheckpointSteps) {
      const int64_t off = (l.b * a.T + s0) * a.C + l.c;
      const int n = static_cast<int>(t1 - s0 < kCheckpointSteps ? t1 - s0 : kCheckpointSteps);
      emit_segment(w, S(0), a.k + off, a.v + off, static_cast<TIn*>(nullptr), static_cast<int>(a.C), n, s);
    }
    store_lane_state(a.starts, l.b * a.nchunks + l.j, a.C, l.c, s);
  }
};

constexpr int kScanGroup = 4;

struct FwdScan {
  template <class TIn, class S>
  WKV_HD void run(int64_t lane, const ScanArgs<TIn, S>& a) {
    const int64_t b = lane / a.C, c = lane % a.C;
    const S w = decay_of(a, c);
    LaneState<S> s = initial_state(a, b, c);
    // Chunks in groups of kScanGroup: the group's folds are loaded before any is combined, so
    // their latencies overlap instead of adding up along the chain.
    for (int64_t j0 = 0; j0 < a.nchunks; j0 += kScanGroup) {
      LaneState<S> fold[kScanGroup];
      for (int q = 0; q < kScanGroup; ++q) {
        if (j0 + q < a.nchunks) fold[q] = load_lane_state(a.starts, b * a.nchunks + j0 + q, a.C, c);
      }
      for (int q = 0; q < kScanGroup; ++q) {
        const int64_t j = j0 + q;
        if (j >= a.nchunks) break;
        store_lane_state(a.starts, b * a.nchunks + j, a.C, c, s);
        const S n = S(chunk_end(a, j) - j * a.chunk);
        combine_states(w, n, s.aa, s.bb, s.pp, fold[q].aa, fold[q].bb, fold[q].pp);
      }
    }
    if (a.state_out) store_lane_state(a.state_out, b, a.C, c, s);
  }
};

struct FwdEmit {
  template <class TIn, class S>
  WKV_HD void run(int64_t i, const ScanArgs<TIn, S>& a) {
    const ChunkLane l = chunk_lane(i, a);
    const S w = decay_of(a, l.c), u = a.u[l.c];
    LaneState<S> s = a.nchunks == 1 ? initial_state(a, l.b, l.c)
                                    : load_lane_state(a.starts, l.b * a.nchunks + l.j, a.C, l.c);
    const int64_t t1 = chunk_end(a, l.j);
    for (int64_t s0 = l.j * a.chunk; s0 < t1; s0 += kCheckpointSteps) {
      if (a.checkpoints) store_lane_state(a.checkpoints, l.b * a.nckpt + s0 / kCheckpointSteps, a.C, l.c, s);
      const int n = static_cast<int>(t1 - s0 < kCheckpointSteps ? t1 - s0 : kCheckpointSteps);
      const int64_t off = (l.b * a.T + s0) * a.C + l.c;
      emit_segment(w, u, a.k + off, a.v + off, a.y ? a.y + off : nullptr, static_cast<int>(a.C), n, s);
    }
    if (a.state_out && a.nchunks == 1) store_lane_state(a.state_out, l.b, a.C, l.c, s);
  }
};

// ---- backward --------------------------------------------------------------------------------

// Adjoints carried backwards (scaled, csrc/rwkv4/wkv.h) and what a walk accumulates.
template <class S>
struct Walk {
  S ga, gb, gcarry;  // adjoints of the state after the current step
  S gw, gu;          // sums of dL/dw and dL/du
  S decay, keep;     // the chunk's linear map (track_chunk_map), when wanted
};

// Recomputes the states before steps s0 .. s0+n-1 (n <= kCheckpointSteps) from the checkpoint at s0 into
// (ta, tb, tp); returns the state after the last of them.
template <class TIn, class S>
WKV_HD LaneState<S> recompute_segment(const ScanArgs<TIn, S>& a, int64_t b, int64_t c, S w,
                                      int64_t s0, int n, S* ta, S* tb, S* tp) {
  LaneState<S> s = load_lane_state(a.checkpoints, b * a.nckpt + s0 / kCheckpointSteps, a.C, c);
  const int64_t off = (b * a.T + s0) * a.C + c;
  const TIn* kp = a.k + off;
  const TIn* vp = a.v + off;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int t = 0; t < kCheckpointSteps; ++t) {
    if (t < n) {
      const int o = t * static_cast<int>(a.C);
      ta[t] = s.aa;
      tb[t] = s.bb;
      tp[t] = s.pp;
      advance_state(w, load_in<TIn, S>(kp, o), load_in<TIn, S>(vp, o), s.aa, s.bb, s.pp);
    }
  }
  return s;
}

// Walks steps s0+n-1 down to s0 with the recomputed states; writes gk, gv when `write`.
template <bool write, bool track, class TIn, class S>
WKV_HD void reverse_steps(S w, S u, const TIn* WKV_RESTRICT k, const TIn* WKV_RESTRICT v,
                          const TIn* WKV_RESTRICT gy, TIn* WKV_RESTRICT gk_out,
                          TIn* WKV_RESTRICT gv_out, int C, int n, const S* ta, const S* tb,
                          const S* tp, Walk<S>& g) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int t = kCheckpointSteps - 1; t >= 0; --t) {
    if (t < n) {
      const int o = t * C;
      const S kt = load_in<TIn, S>(k, o), vt = load_in<TIn, S>(v, o);
      S f1, f2, gk, gv;
      decltype(kt >= kt) state_wins;
      wkv_max_pair(tp[t] + w, kt, f1, f2, state_wins);
      backward_step(u, kt, vt, load_in<TIn, S>(gy, o), ta[t], tb[t], tp[t], f1, f2, g.ga, g.gb,
                    g.gcarry, g.gw, g.gu, gk, gv);
      if (track) track_chunk_map(f1, f2, g.decay, g.keep);
      if (write) {
        gk_out[o] = static_cast<TIn>(gk);
        gv_out[o] = static_cast<TIn>(gv);
      }
    }
  }
}

template <bool write, bool track, class TIn, class S>
WKV_HD void reverse_segment(const ScanArgs<TIn, S>& a, int64_t b, int64_t c, S w, S u,
                            int64_t s0, int n, const S* ta, const S* tb, const S* tp,
                            Walk<S>& g) {
  const int64_t off = (b * a.T + s0) * a.C + c;
  reverse_steps<write, track>(w, u, a.k + off, a.v + off, a.gy + off,
                              write ? a.gk + off : nullptr, write ? a.gv + off : nullptr,
                              static_cast<int>(a.C), n, ta, tb, tp, g);
}

// The seed of the reverse pass from the gradient of the returned state (zero if none).
template <class TIn, class S>
WKV_HD void seed_walk(const ScanArgs<TIn, S>& a, int64_t b, int64_t c, const LaneState<S>& last,
                      Walk<S>& g) {
  if (a.gstate_out) {
    backward_init(a.gstate_out[at3(b, 3, 0, a.C, c)], a.gstate_out[at3(b, 3, 1, a.C, c)],
                  a.gstate_out[at3(b, 3, 2, a.C, c)], last.aa, last.bb, g.ga, g.gb, g.gcarry);
  } else {
    g.ga = g.gb = g.gcarry = S(0);
  }
}

// Walks chunk j of lane (b, c) backwards from the adjoints in g.
template <bool write, bool track, class TIn, class S>
WKV_HD void walk_chunk(const ScanArgs<TIn, S>& a, int64_t b, int64_t j, int64_t c, S w, S u,
                       bool seed_at_end, Walk<S>& g) {
  S ta[kCheckpointSteps], tb[kCheckpointSteps], tp[kCheckpointSteps];
  const int64_t t0 = j * a.chunk, t1 = chunk_end(a, j);
  for (int64_t s0 = t0 + ((t1 - 1 - t0) / kCheckpointSteps) * kCheckpointSteps; s0 >= t0; s0 -= kCheckpointSteps) {
    const int n = static_cast<int>(t1 - s0 < kCheckpointSteps ? t1 - s0 : kCheckpointSteps);
    const LaneState<S> after = recompute_segment(a, b, c, w, s0, n, ta, tb, tp);
    if (seed_at_end && s0 + n == a.T) seed_walk(a, b, c, after, g);
    reverse_segment<write, track>(a, b, c, w, u, s0, n, ta, tb, tp, g);
  }
}

struct BwdLocal {
  template <class TIn, class S>
  WKV_HD void run(int64_t i, const ScanArgs<TIn, S>& a) {
    const ChunkLane l = chunk_lane(i, a);
    if (l.j == 0) return;  // chunk 0's map is never needed: bwd_emit walks it last
    Walk<S> g{S(0), S(0), S(0), S(0), S(0), S(1), S(1)};
    walk_chunk<false, true>(a, l.b, l.j, l.c, decay_of(a, l.c), a.u[l.c], false, g);
    const int64_t row = l.b * a.nchunks + l.j;
    a.local[at3(row, 4, 0, a.C, l.c)] = g.ga;
    a.local[at3(row, 4, 1, a.C, l.c)] = g.gb;
    a.local[at3(row, 4, 2, a.C, l.c)] = g.decay;
    a.local[at3(row, 4, 3, a.C, l.c)] = g.keep;
  }
};

struct BwdScan {
  template <class TIn, class S>
  WKV_HD void run(int64_t lane, const ScanArgs<TIn, S>& a) {
    const int64_t b = lane / a.C, c = lane % a.C;
    Walk<S> g{};
    if (a.gstate_out) {
      // The returned state: the last checkpoint advanced through the last (partial) segment.
      const S w = decay_of(a, c);
      const int64_t s0 = (a.nckpt - 1) * kCheckpointSteps;
      LaneState<S> s = load_lane_state(a.checkpoints, b * a.nckpt + a.nckpt - 1, a.C, c);
      const int64_t off = (b * a.T + s0) * a.C + c;
      emit_segment(w, S(0), a.k + off, a.v + off, static_cast<TIn*>(nullptr), static_cast<int>(a.C),
                   static_cast<int>(a.T - s0), s);
      seed_walk(a, b, c, s, g);
    } else {
      g.ga = g.gb = g.gcarry = S(0);
    }
    // Chunks last to first in groups (as FwdScan): loads of a group's maps first.
    for (int64_t j0 = a.nchunks - 1; j0 >= 0; j0 -= kScanGroup) {
      S map[kScanGroup][4];
      for (int q = 0; q < kScanGroup; ++q) {
        const int64_t j = j0 - q;
        if (j < 1) break;  // chunk 0 has no map (and needs none)
        for (int part = 0; part < 4; ++part) map[q][part] = a.local[at3(b * a.nchunks + j, 4, part, a.C, c)];
      }
      for (int q = 0; q < kScanGroup; ++q) {
        const int64_t j = j0 - q;
        if (j < 0) break;
        const int64_t row = b * a.nchunks + j;
        a.adjoint[at3(row, 3, 0, a.C, c)] = g.ga;
        a.adjoint[at3(row, 3, 1, a.C, c)] = g.gb;
        a.adjoint[at3(row, 3, 2, a.C, c)] = g.gcarry;
        if (j == 0) break;
        carry_adjoints(map[q][2], map[q][3], map[q][0], map[q][1], g.ga, g.gb, g.gcarry);
      }
    }
  }
};

struct BwdEmit {
  template <class TIn, class S>
  WKV_HD void run(int64_t i, const ScanArgs<TIn, S>& a) {
    const ChunkLane l = chunk_lane(i, a);
    const int64_t row = l.b * a.nchunks + l.j;
    Walk<S> g{S(0), S(0), S(0), S(0), S(0), S(1), S(1)};
    const bool serial = a.nchunks == 1;
    if (!serial) {
      g.ga = a.adjoint[at3(row, 3, 0, a.C, l.c)];
      g.gb = a.adjoint[at3(row, 3, 1, a.C, l.c)];
      g.gcarry = a.adjoint[at3(row, 3, 2, a.C, l.c)];
    }
    walk_chunk<true, false>(a, l.b, l.j, l.c, decay_of(a, l.c), a.u[l.c], serial, g);
    a.parts[at3(row, 2, 0, a.C, l.c)] = g.gw;
    a.parts[at3(row, 2, 1, a.C, l.c)] = g.gu;
    if (l.j == 0 && a.gstate_in) {
      const LaneState<S> s0 = load_lane_state(a.checkpoints, l.b * a.nckpt, a.C, l.c);
      backward_finish(g.ga, g.gb, g.gcarry, s0.aa, s0.bb, a.gstate_in[at3(l.b, 3, 0, a.C, l.c)],
                      a.gstate_in[at3(l.b, 3, 1, a.C, l.c)], a.gstate_in[at3(l.b, 3, 2, a.C, l.c)]);
    }
  }
};

// Thread i: channel c = i (sum_rows: one (C,) gradient) or lane (b, c) (accumulate into (B, C)).
struct BwdReduce {
  template <class TIn, class S>
  WKV_HD void run(int64_t i, const ScanArgs<TIn, S>& a) {
    const int64_t c = i % a.C;
    const int64_t b0 = a.sum_rows ? 0 : i / a.C, b1 = a.sum_rows ? a.B : b0 + 1;
    const S w = decay_of(a, c);
    // Per row: the sum over chunks times w, then rows summed, in the order RWKV-LM's contract
    // (a (B, C) result summed over B afterwards) and the CPU kernel associate it.
    S gw = S(0), gu = S(0);
    for (int64_t b = b0; b < b1; ++b) {
      S row_w = S(0), row_u = S(0);
      for (int64_t j = 0; j < a.nchunks; ++j) {
        row_w = row_w + a.parts[at3(b * a.nchunks + j, 2, 0, a.C, c)];
        row_u = row_u + a.parts[at3(b * a.nchunks + j, 2, 1, a.C, c)];
      }
      gw = gw + row_w * w;
      gu = gu + row_u;
    }
    if (a.sum_rows) {
      a.gw[c] = gw;
      a.gu[c] = gu;
    } else {
      a.gw[i] += gw;
      a.gu[i] += gu;
    }
  }
};

// ---- the plan --------------------------------------------------------------------------------

// Chunk length for B lanes-rows x C channels x T steps on a GPU with `sms` multiprocessors:
// `forced` > 0 rounds that up to a multiple of kCheckpointSteps; -1 forces one chunk (the serial kernel);
// 0 chooses. The choice: the shortest chunk (kCheckpointSteps * 2^m) that is at least sqrt(T) / 2 (so the
// per-lane scan over chunks stays shorter than the chunks) and keeps B * C * nchunks threads
// within about one full GPU (2048 per multiprocessor). Once B * C alone fills the GPU that
// length reaches T: one chunk, the serial kernel. Returns a length >= T for one chunk.
inline int64_t plan_chunk(int64_t B, int64_t T, int64_t C, int64_t sms, int64_t forced) {
  const int64_t whole = ((T + kCheckpointSteps - 1) / kCheckpointSteps) * kCheckpointSteps;
  if (forced == -1) return whole;
  if (forced > 0) {
    const int64_t l = ((forced + kCheckpointSteps - 1) / kCheckpointSteps) * kCheckpointSteps;
    return l < whole ? l : whole;
  }
  const int64_t target = (sms > 0 ? sms : 1) * 2048;
  int64_t l = kCheckpointSteps;
  while (l < T && (4 * l * l < T || B * C * ((T + l - 1) / l) > target)) l *= 2;
  return l < whole ? l : whole;
}

}  // namespace wkv
