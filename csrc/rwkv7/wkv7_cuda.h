// The RWKV-7 CUDA kernels' bodies and schedules, written once for two executors: the GPU
// (wkv7_kernel.cu: one block per (batch row, head), NP threads, __syncthreads() between phases)
// and the CPU emulation (cpu/wkv7_emulate.cpp: every phase run for thread 0, 1, ..., NP - 1 in
// turn, blocks in parallel). A phase reads what earlier phases wrote (shared memory, the
// workspace) and nothing a later phase of the same block writes, so running a block's threads
// one after another between barriers is exactly what the GPU computes; only launch
// configuration and memory-system effects are left to a real GPU.
//
// Design (serial over T, RWKV-LM's structure; rwkv7/wkv7.h has the math): thread i of a block
// holds row i of the state in registers. Forward, per step: the threads load the step's r, d, k,
// a, b into shared memory; thread i forms sa_i, updates its row and writes y_i. Backward, per
// chunk of kCheckpointSteps (last to first): thread i recomputes its row's states from the
// checkpoint into the workspace (one (K, N, N) block per head, in L2), then per step (reverse)
// thread i acts as row i (G = H + gy r^T row, gv_i, gsa_i) and then as column j = i (gr, gk, gb,
// ga, gw of key channel j, and H's column update), with H = dL/dS_t in shared memory (rows
// padded by one element: no bank conflicts either way). NP is N rounded up to 32, 64 or 128.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "rwkv7/wkv7.h"

namespace wkv::v7 {

constexpr int kMaxCudaN = 128;  // the largest head size the CUDA kernels are instantiated for

template <class TIn, class S>
struct CudaArgs : Wkv7Io<const S*, S*, const TIn*, TIn*> {
  S* work = nullptr;  // backward: (B * H) x (K * N * N + K * N)
};

template <class TIn, class S>
WKV7_HD S load_seq(const TIn* p, int64_t off) {
  if constexpr (std::is_same_v<TIn, float> || std::is_same_v<TIn, double>) {
    return static_cast<S>(p[off]);
  } else {  // torch's BFloat16 / Half: their own conversion (host and device)
    return static_cast<S>(static_cast<float>(p[off]));
  }
}
template <class TIn, class S>
WKV7_HD void store_seq(TIn* p, int64_t off, S x) {
  if constexpr (std::is_same_v<TIn, float> || std::is_same_v<TIn, double>) {
    p[off] = static_cast<TIn>(x);
  } else {
    p[off] = static_cast<TIn>(static_cast<float>(x));
  }
}

template <class S>
WKV7_HD S exp_of(S x) {
  if constexpr (std::is_same_v<S, float>) {
    return expf(x);
  } else {
    return exp(x);
  }
}

// (b, t, h, 0) of a (B, T, H, N) sequence for block blk = b * H + h.
template <class A>
WKV7_HD int64_t seq_offset(const A& a, int64_t blk, int64_t t) {
  return ((blk / a.H * a.T + t) * a.H + blk % a.H) * a.N;
}

// ---- forward --------------------------------------------------------------------------------

template <int NP, class TIn, class S>
struct Fwd7 {
  static constexpr int kThreads = NP;
  enum Phase { kBegin, kLoad, kStep, kEnd };
  struct Shared {
    S r[NP], d[NP], k[NP], a[NP], b[NP];
  };
  struct Thread {
    S s[NP];
  };

  WKV7_HD static void phase(int which, int tid, int64_t blk, int64_t t, Thread& th, Shared& sh,
                            const CudaArgs<TIn, S>& a) {
    const int64_t N = a.N, NN = N * N;
    switch (which) {
      case kBegin:
        for (int j = 0; j < NP; ++j) {
          th.s[j] = (a.state_in && tid < N && j < N) ? a.state_in[blk * NN + tid * N + j] : S(0);
        }
        break;
      case kLoad: {
        const int64_t o = seq_offset(a, blk, t) + tid;
        const bool in = tid < N;
        sh.r[tid] = in ? load_seq<TIn, S>(a.r, o) : S(0);
        sh.d[tid] = in ? exp_of(-exp_of(load_seq<TIn, S>(a.w, o))) : S(0);
        sh.k[tid] = in ? load_seq<TIn, S>(a.k, o) : S(0);
        sh.a[tid] = in ? load_seq<TIn, S>(a.a, o) : S(0);
        sh.b[tid] = in ? load_seq<TIn, S>(a.b, o) : S(0);
        break;
      }
      case kStep: {
        if (tid >= N) break;
        if (a.checkpoints && t % kCheckpointSteps == 0) {
          S* c = a.checkpoints + (blk * num_checkpoints(a.T) + t / kCheckpointSteps) * NN + tid * N;
          for (int j = 0; j < NP; ++j) {
            if (j < N) c[j] = th.s[j];
          }
        }
        const int64_t o = seq_offset(a, blk, t) + tid;
        const S v = load_seq<TIn, S>(a.v, o);
        S sa = 0;
        for (int j = 0; j < NP; ++j) sa += th.s[j] * sh.a[j];
        S y = 0;
        for (int j = 0; j < NP; ++j) {
          th.s[j] = th.s[j] * sh.d[j] + sa * sh.b[j] + v * sh.k[j];
          y += th.s[j] * sh.r[j];
        }
        if (a.y) store_seq<TIn, S>(a.y, o, y);
        break;
      }
      case kEnd:
        if (a.state_out && tid < N) {
          for (int j = 0; j < NP; ++j) {
            if (j < N) a.state_out[blk * NN + tid * N + j] = th.s[j];
          }
        }
        break;
    }
  }

  // The order of phases of one block (a barrier after each), written once for both executors.
  template <class Run>
  WKV7_HD static void schedule(int64_t T, Run& run) {
    run(kBegin, 0);
    for (int64_t t = 0; t < T; ++t) {
      run(kLoad, t);
      run(kStep, t);
    }
    run(kEnd, T);
  }
};

// ---- backward -------------------------------------------------------------------------------

template <int NP, class TIn, class S>
struct Bwd7 {
  static constexpr int kThreads = NP;
  enum Phase { kInit, kRecBegin, kLoad, kRecStep, kBLoad, kRow, kCol, kEnd };
  static constexpr int kStride = NP + 1;  // H's rows, padded: row and column walks conflict-free
  struct Shared {
    S h[NP * kStride];  // dL/dS_t; G during a step
    S r[NP], d[NP], e[NP], k[NP], a[NP], b[NP];
    S gy[NP], v[NP], sa[NP], gsa[NP];
  };
  struct Thread {
    S s[NP];  // the recomputed state's row
  };
  static int64_t work_per_block(int64_t N) { return kCheckpointSteps * N * N + kCheckpointSteps * N; }

  WKV7_HD static void phase(int which, int tid, int64_t blk, int64_t t, Thread& th, Shared& sh,
                            const CudaArgs<TIn, S>& a) {
    const int64_t N = a.N, NN = N * N, K = kCheckpointSteps;
    S* work = a.work + blk * (K * NN + K * N);  // states (K, N, N), then sa (K, N)
    const int64_t t0 = t / K * K, slot = t - t0;
    switch (which) {
      case kInit:
        for (int j = 0; j < NP; ++j) {
          sh.h[tid * kStride + j] =
              (a.gstate_out && tid < N && j < N) ? a.gstate_out[blk * NN + tid * N + j] : S(0);
        }
        break;
      case kRecBegin:  // t: the chunk's first step
        for (int j = 0; j < NP; ++j) {
          th.s[j] = (tid < N && j < N)
                        ? a.checkpoints[(blk * num_checkpoints(a.T) + t / K) * NN + tid * N + j]
                        : S(0);
        }
        break;
      case kLoad:
      case kBLoad: {
        const int64_t o = seq_offset(a, blk, t) + tid;
        const bool in = tid < N;
        const S e = in ? exp_of(load_seq<TIn, S>(a.w, o)) : S(0);
        sh.r[tid] = in ? load_seq<TIn, S>(a.r, o) : S(0);
        sh.d[tid] = in ? exp_of(-e) : S(0);
        sh.k[tid] = in ? load_seq<TIn, S>(a.k, o) : S(0);
        sh.a[tid] = in ? load_seq<TIn, S>(a.a, o) : S(0);
        sh.b[tid] = in ? load_seq<TIn, S>(a.b, o) : S(0);
        if (which == kBLoad) {
          sh.e[tid] = e;
          sh.gy[tid] = in ? load_seq<TIn, S>(a.gy, o) : S(0);
          sh.v[tid] = in ? load_seq<TIn, S>(a.v, o) : S(0);
          sh.sa[tid] = in ? work[K * NN + slot * N + tid] : S(0);
        }
        break;
      }
      case kRecStep: {  // S_{t-1} and sa_t into the workspace, then the row's update
        if (tid >= N) break;
        S* p = work + slot * NN + tid * N;
        S sa = 0;
        for (int j = 0; j < NP; ++j) {
          if (j < N) p[j] = th.s[j];
          sa += th.s[j] * sh.a[j];
        }
        work[K * NN + slot * N + tid] = sa;
        const S v = load_seq<TIn, S>(a.v, seq_offset(a, blk, t) + tid);
        for (int j = 0; j < NP; ++j) th.s[j] = th.s[j] * sh.d[j] + sa * sh.b[j] + v * sh.k[j];
        break;
      }
      case kRow: {  // thread = row i: G = H + gy_i r, gv_i, gsa_i
        if (tid >= N) break;
        S* h = sh.h + tid * kStride;
        const S gy = sh.gy[tid];
        S gv = 0, gsa = 0;
        for (int j = 0; j < NP; ++j) {
          const S g = h[j] + gy * sh.r[j];
          h[j] = g;
          gv += g * sh.k[j];
          gsa += g * sh.b[j];
        }
        sh.gsa[tid] = gsa;
        store_seq<TIn, S>(a.gv, seq_offset(a, blk, t) + tid, gv);
        break;
      }
      case kCol: {  // thread = key channel j: its gradients, and H's column j for step t - 1
        if (tid >= N) break;
        const int j = tid;
        const S* p = work + slot * NN + j;
        const S dj = sh.d[j], aj = sh.a[j];
        S q = 0, gk = 0, gb = 0, gd = 0, ga = 0, sa_gy = 0, v_gy = 0;
        for (int i = 0; i < NP; ++i) {
          if (i >= N) break;
          const S g = sh.h[i * kStride + j], pij = p[i * N];
          q += pij * sh.gy[i];
          gk += g * sh.v[i];
          gb += g * sh.sa[i];
          gd += g * pij;
          ga += pij * sh.gsa[i];
          sa_gy += sh.sa[i] * sh.gy[i];
          v_gy += sh.v[i] * sh.gy[i];
          sh.h[i * kStride + j] = g * dj + sh.gsa[i] * aj;
        }
        const int64_t o = seq_offset(a, blk, t) + j;
        store_seq<TIn, S>(a.gr, o, dj * q + sh.b[j] * sa_gy + sh.k[j] * v_gy);
        store_seq<TIn, S>(a.gk, o, gk);
        store_seq<TIn, S>(a.gb, o, gb);
        store_seq<TIn, S>(a.ga, o, ga);
        // d exp(w) with its limit 0 where d underflowed (exp(w) may then be inf)
        store_seq<TIn, S>(a.gw, o, -gd * (dj == S(0) ? S(0) : dj * sh.e[j]));
        break;
      }
      case kEnd:
        if (a.gstate_in && tid < N) {
          for (int j = 0; j < NP; ++j) {
            if (j < N) a.gstate_in[blk * NN + tid * N + j] = sh.h[tid * kStride + j];
          }
        }
        break;
    }
  }

  template <class Run>
  WKV7_HD static void schedule(int64_t T, Run& run) {
    const int64_t K = kCheckpointSteps;
    run(kInit, 0);
    for (int64_t c = num_checkpoints(T) - 1; c >= 0; --c) {
      const int64_t t0 = c * K, t1 = t0 + K < T ? t0 + K : T;
      run(kRecBegin, t0);
      for (int64_t t = t0; t < t1; ++t) {
        run(kLoad, t);
        run(kRecStep, t);
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        run(kBLoad, t);
        run(kRow, t);
        run(kCol, t);
      }
    }
    run(kEnd, 0);
  }
};

}  // namespace wkv::v7
