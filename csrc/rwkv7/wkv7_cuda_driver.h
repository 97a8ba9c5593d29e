// The RWKV-7 CUDA launcher's logic, written once for two executors: the GPU (wkv7_kernel.cu)
// and the CPU emulation (cpu/wkv7_emulate.cpp). It picks the types and the block size NP,
// fills the arguments and allocates the backward's workspace. An executor provides
//   template <class Body, class TIn, class S>
//   void run(int64_t blocks, const CudaArgs<TIn, S>& args);   Body::schedule for every block
#pragma once

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "common/tensor.h"
#include "rwkv7/wkv7_cuda.h"
#include "rwkv7/wkv7_launch.h"

namespace wkv::v7 {

// Calls fn.template operator()<TIn, S, NP>() for the launch's types and block size.
template <class Fn>
void dispatch_cuda(const Launch& a, Fn fn) {
  WKV_CHECK_VALUE(a.N <= kMaxCudaN, "wkv7: the CUDA kernels take head sizes N <= ", kMaxCudaN,
                  ", got N = ", a.N, " (the CPU kernels take any N)");
  const auto by_size = [&]<class TIn, class S>() {
    if (a.N <= 32) return fn.template operator()<TIn, S, 32>();
    if (a.N <= 64) return fn.template operator()<TIn, S, 64>();
    return fn.template operator()<TIn, S, 128>();
  };
  switch (a.r.scalar_type()) {
    case ScalarType::Double: return by_size.template operator()<double, double>();
    case ScalarType::BFloat16: return by_size.template operator()<torch::headeronly::BFloat16, float>();
    case ScalarType::Half: return by_size.template operator()<torch::headeronly::Half, float>();
    case ScalarType::Float: return by_size.template operator()<float, float>();
    default: WKV_CHECK(false, "wkv7: unsupported dtype ", torch::headeronly::toString(a.r.scalar_type()));
  }
}

template <class TIn, class S>
CudaArgs<TIn, S> cuda_args(const Launch& a) {
  CudaArgs<TIn, S> c;
  c.B = a.B;
  c.T = a.T;
  c.H = a.H;
  c.N = a.N;
  c.r = ptr_or_null<const TIn>(a.r);
  c.k = ptr_or_null<const TIn>(a.k);
  c.v = ptr_or_null<const TIn>(a.v);
  c.a = ptr_or_null<const TIn>(a.a);
  c.b = ptr_or_null<const TIn>(a.b);
  c.w = ptr_or_null<const TIn>(a.w);
  c.state_in = ptr_or_null<const S>(a.state_in);
  c.state_out = ptr_or_null<S>(a.state_out);
  c.checkpoints = ptr_or_null<S>(a.checkpoints);
  c.y = ptr_or_null<TIn>(a.y);
  c.gy = ptr_or_null<const TIn>(a.gy);
  c.gstate_out = ptr_or_null<const S>(a.gstate_out);
  c.gr = ptr_or_null<TIn>(a.gr);
  c.gw = ptr_or_null<TIn>(a.gw);
  c.gk = ptr_or_null<TIn>(a.gk);
  c.gv = ptr_or_null<TIn>(a.gv);
  c.ga = ptr_or_null<TIn>(a.ga);
  c.gb = ptr_or_null<TIn>(a.gb);
  c.gstate_in = ptr_or_null<S>(a.gstate_in);
  return c;
}

template <class Exec>
void cuda_forward(const Launch& a, Exec& ex) {
  dispatch_cuda(a, [&]<class TIn, class S, int NP>() {
    ex.template run<Fwd7<NP, TIn, S>>(a.B * a.H, cuda_args<TIn, S>(a));
  });
}

template <class Exec>
void cuda_backward(const Launch& a, Exec& ex) {
  dispatch_cuda(a, [&]<class TIn, class S, int NP>() {
    using Body = Bwd7<NP, TIn, S>;
    CudaArgs<TIn, S> c = cuda_args<TIn, S>(a);
    const Tensor work = new_tensor({a.B * a.H * Body::work_per_block(a.N)},
                                   a.r.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float, a.r);
    c.work = static_cast<S*>(work.data_ptr());
    ex.template run<Body>(a.B * a.H, c);
  });
}

}  // namespace wkv::v7
