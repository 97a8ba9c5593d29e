// CUDA kernels: one thread per (batch row, channel) lane, running the recurrence of csrc/wkv.h
// with a scalar float (or double) over t. Loads and stores are coalesced: neighbouring threads
// are neighbouring channels, and the layout is channel-fastest. All offsets are 64-bit.
//
// Backward needs the state before every step in reverse order. A first pass writes it to a
// (B, T, 3, C) scratch tensor from the caching allocator; the reverse pass reads it back. This
// keeps any T working (no compile-time limit, no per-thread arrays).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <type_traits>

#include "wkv.h"
#include "wkv_launch.h"

namespace wkv {
namespace {

constexpr int kThreads = 64;

// The input state of lane (b, c), or the empty state.
template <class TAcc>
__device__ __forceinline__ void load_state(const TAcc* __restrict__ state_in, int64_t b, int64_t c,
                                           int64_t C, TAcc& aa, TAcc& bb, TAcc& pp) {
  aa = 0;
  bb = 0;
  pp = TAcc(kEmptyExponent);
  if (state_in) {
    aa = state_in[(b * 3 + 0) * C + c];
    bb = state_in[(b * 3 + 1) * C + c];
    pp = state_in[(b * 3 + 2) * C + c];
  }
}

template <class TIn, class TAcc>
__global__ void forward_kernel(int64_t B, int64_t T, int64_t C, const TAcc* __restrict__ w,
                               const TAcc* __restrict__ u, const TIn* __restrict__ k,
                               const TIn* __restrict__ v, const TAcc* __restrict__ state_in,
                               TIn* __restrict__ y, TAcc* __restrict__ state_out) {
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (lane >= B * C) return;
  const int64_t b = lane / C, c = lane % C;
  TAcc aa, bb, pp;
  load_state(state_in, b, c, C, aa, bb, pp);
  const TAcc ww = w[c], uu = u[c];
  int64_t off = b * T * C + c;
  for (int64_t t = 0; t < T; ++t, off += C) {
    const TAcc kt = static_cast<TAcc>(k[off]);
    const TAcc vt = static_cast<TAcc>(v[off]);
    y[off] = static_cast<TIn>(forward_step(ww, uu, kt, vt, aa, bb, pp));
  }
  if (state_out) {
    state_out[(b * 3 + 0) * C + c] = aa;
    state_out[(b * 3 + 1) * C + c] = bb;
    state_out[(b * 3 + 2) * C + c] = pp;
  }
}

template <class TIn, class TAcc>
__global__ void backward_kernel(int64_t B, int64_t T, int64_t C, const TAcc* __restrict__ w,
                                const TAcc* __restrict__ u, const TIn* __restrict__ k,
                                const TIn* __restrict__ v, const TAcc* __restrict__ state_in,
                                const TIn* __restrict__ gy,
                                const TAcc* __restrict__ gstate_out, TAcc* __restrict__ trace,
                                TIn* __restrict__ gk, TIn* __restrict__ gv,
                                TAcc* __restrict__ gw_out, TAcc* __restrict__ gu_out,
                                TAcc* __restrict__ gstate_in) {
  const int64_t lane = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (lane >= B * C) return;
  const int64_t b = lane / C, c = lane % C;
  TAcc aa, bb, pp;
  load_state(state_in, b, c, C, aa, bb, pp);
  const TAcc aa0 = aa, bb0 = bb;
  const TAcc ww = w[c], uu = u[c];
  // Pass 1: the state before every step.
  for (int64_t t = 0; t < T; ++t) {
    const int64_t off = (b * T + t) * C + c;
    TAcc* tr = trace + ((b * T + t) * 3) * C + c;
    tr[0] = aa;
    tr[C] = bb;
    tr[2 * C] = pp;
    advance_state(ww, static_cast<TAcc>(k[off]), static_cast<TAcc>(v[off]), aa, bb, pp);
  }
  TAcc ga, gb, gc, gw = 0, gu = 0;
  if (gstate_out) {
    backward_init(gstate_out[(b * 3 + 0) * C + c], gstate_out[(b * 3 + 1) * C + c],
                  gstate_out[(b * 3 + 2) * C + c], aa, bb, ga, gb, gc);
  } else {
    backward_init(TAcc(0), TAcc(0), TAcc(0), aa, bb, ga, gb, gc);
  }
  // Pass 2: the reverse recurrence.
  for (int64_t t = T - 1; t >= 0; --t) {
    const int64_t off = (b * T + t) * C + c;
    const TAcc* tr = trace + ((b * T + t) * 3) * C + c;
    TAcc gkt, gvt;
    backward_step(ww, uu, static_cast<TAcc>(k[off]), static_cast<TAcc>(v[off]),
                  static_cast<TAcc>(gy[off]), tr[0], tr[C], tr[2 * C], ga, gb, gc, gw, gu, gkt,
                  gvt);
    gk[off] = static_cast<TIn>(gkt);
    gv[off] = static_cast<TIn>(gvt);
  }
  gw_out[b * C + c] += gw * ww;
  gu_out[b * C + c] += gu;
  if (gstate_in) {
    backward_finish(ga, gb, gc, aa0, bb0, gstate_in[(b * 3 + 0) * C + c],
                    gstate_in[(b * 3 + 1) * C + c], gstate_in[(b * 3 + 2) * C + c]);
  }
}

template <class T>
const T* opt_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <class T>
T* opt_mut_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

unsigned int blocks_for(int64_t lanes) {
  const int64_t n = (lanes + kThreads - 1) / kThreads;
  TORCH_CHECK(n <= 0x7fffffff, "wkv: B * C = ", lanes, " is too large for one CUDA grid");
  return static_cast<unsigned int>(n);
}

}  // namespace

void forward_cuda(const Launch& a) {
  const c10::cuda::CUDAGuard guard(a.k.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.k.scalar_type(), "wkv_forward_cuda", [&] {
    using TIn = scalar_t;
    using TAcc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_kernel<TIn, TAcc><<<blocks_for(a.B * a.C), kThreads, 0, stream>>>(
        a.B, a.T, a.C, a.w.data_ptr<TAcc>(), a.u.data_ptr<TAcc>(), a.k.data_ptr<TIn>(),
        a.v.data_ptr<TIn>(), opt_ptr<TAcc>(a.state_in), a.y.data_ptr<TIn>(),
        opt_mut_ptr<TAcc>(a.state_out));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void backward_cuda(const Launch& a) {
  const c10::cuda::CUDAGuard guard(a.k.device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const at::Tensor trace = at::empty({a.B, a.T, 3, a.C}, a.w.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.k.scalar_type(), "wkv_backward_cuda", [&] {
    using TIn = scalar_t;
    using TAcc = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    backward_kernel<TIn, TAcc><<<blocks_for(a.B * a.C), kThreads, 0, stream>>>(
        a.B, a.T, a.C, a.w.data_ptr<TAcc>(), a.u.data_ptr<TAcc>(), a.k.data_ptr<TIn>(),
        a.v.data_ptr<TIn>(), opt_ptr<TAcc>(a.state_in), a.gy.data_ptr<TIn>(),
        opt_ptr<TAcc>(a.gstate_out), trace.data_ptr<TAcc>(), a.gk.data_ptr<TIn>(),
        a.gv.data_ptr<TIn>(), a.gw.data_ptr<TAcc>(), a.gu.data_ptr<TAcc>(),
        opt_mut_ptr<TAcc>(a.gstate_in));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace wkv
