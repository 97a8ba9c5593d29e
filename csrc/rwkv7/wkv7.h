// RWKV-7's WKV recurrence: the definition, the arguments every kernel takes, and the constants
// the CPU kernels (cpu/wkv7_cpu_kernel.h), the CUDA kernels (wkv7_kernel.cu) and their CPU
// emulation (wkv7_cuda.h, cpu/wkv7_emulate.cpp) share.
//
// r, k, v, a, b, y: (B, T, H, N). Per batch row and head the state S is N x N, S[i][j] with i
// the value index and j the key index, stored row-major ((B, H, N, N): the public layout).
// With the decay d_t = exp(-exp(w_t)) per key channel (each kernel forms it as it loads w_t,
// in the math dtype):
//
//   sa_t = S_{t-1} a_t
//   S_t  = S_{t-1} diag(d_t) + sa_t b_t^T + v_t k_t^T
//   y_t  = S_t r_t  =  S_{t-1} (d_t * r_t) + sa_t (b_t . r_t) + v_t (k_t . r_t)
//
// The backward walks t from T - 1 down to 0 with H = dL/dS_t (gstate_out at t = T):
//
//   G      = H + gy_t r_t^T                       (the whole gradient of S_t)
//   gv_t   = G k_t          gsa = G b_t
//   gk_t   = G^T v_t        gb_t = G^T sa_t       gd_t = sum_i G[i][:] * S_{t-1}[i][:]
//   ga_t   = S_{t-1}^T gsa
//   gr_t   = d_t * (S_{t-1}^T gy_t) + b_t (sa_t . gy_t) + k_t (v_t . gy_t)
//   gw_t   = -gd_t * d_t * exp(w_t)
//   H      = G diag(d_t) + gsa a_t^T                (dL/dS_{t-1})
//
// S_{t-1} is never stored for every t (that would be a (T, N, N) trace per head): the forward
// can save the state before every kCheckpointSteps-th step, and the backward recomputes one
// such chunk of states at a time from them.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define WKV7_HD __host__ __device__ __forceinline__
#else
#define WKV7_HD inline
#endif

namespace wkv::v7 {

// Checkpoint spacing (also the backward's chunk of recomputed states): checkpoints are
// (B, H, ceil(T / kCheckpointSteps), N, N) in the math dtype, ~N / (6 kCheckpointSteps) of the
// inputs' elements (a third for N = 64).
constexpr int64_t kCheckpointSteps = 32;

WKV7_HD int64_t num_checkpoints(int64_t T) { return (T + kCheckpointSteps - 1) / kCheckpointSteps; }

// The kernels' arguments, one field list for every backend: Seq* the (B, T, H, N) sequences in
// the input dtype, Math* the math dtype. w is RWKV-LM's w: the decay is exp(-exp(w)).
template <class MathIn, class MathOut, class SeqIn, class SeqOut>
struct Wkv7Io {
  int64_t B = 0, T = 0, H = 0, N = 0;
  SeqIn r{}, w{}, k{}, v{}, a{}, b{};
  MathIn state_in{};      // (B, H, N, N) or none: the zero state
  MathOut state_out{};    // forward, optional
  MathOut checkpoints{};  // forward: written if present; backward: read
  SeqOut y{};             // forward, optional
  SeqIn gy{};             // backward
  MathIn gstate_out{};    // backward, optional (none: zero)
  SeqOut gr{}, gw{}, gk{}, gv{}, ga{}, gb{};
  MathOut gstate_in{};    // backward, optional
};

}  // namespace wkv::v7
