// CPU launcher: picks the kernel for this processor and hands it raw pointers.
//
// float32 math runs the widest SIMD kernel the processor supports (AVX-512F, else
// AVX2+FMA+F16C, else scalar), chosen at run time so the same build runs on any x86-64 (and
// elsewhere, where only the scalar kernel is built). float64 runs the scalar kernel.
// bfloat16/float16 sequences are widened to float32 as they are loaded and rounded back as they
// are stored, inside the kernel (no converted copies). "cuda_emulation" instead runs the CUDA
// kernels' bodies over their grids (wkv_emulate.cpp): for tests, never the default.
#include <torch/csrc/stable/ops.h>

#include <algorithm>
#include <cmath>
#include <array>
#include <vector>

#include "common/cpu_isa.h"
#include "rwkv4/wkv_launch.h"
#include "wkv_cpu_args.h"

namespace wkv {
namespace {

template <class S, class I>
CpuArgs<S, I> make_args(const Launch& a, const Tensor& w) {
  CpuArgs<S, I> c;
  c.B = a.B;
  c.T = a.T;
  c.C = a.C;
  c.nthreads = static_cast<int>(torch::stable::get_num_threads());
  c.w = ptr_or_null<const S>(w);
  c.u = ptr_or_null<const S>(a.u);
  c.k = ptr_or_null<const I>(a.k);
  c.v = ptr_or_null<const I>(a.v);
  c.state_in = ptr_or_null<const S>(a.state_in);
  c.checkpoints = ptr_or_null<S>(a.checkpoints);
  return c;
}

template <class I>
bool run_forward(const CpuArgs<float, I>& c) {
  switch (current_isa()) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: return forward_cpu_avx512(c);
    case Isa::Avx2: return forward_cpu_avx2(c);
#endif
    default: return forward_cpu_scalar(c);
  }
}
template <class I>
bool run_backward(const CpuArgs<float, I>& c) {
  switch (current_isa()) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: return backward_cpu_avx512(c);
    case Isa::Avx2: return backward_cpu_avx2(c);
#endif
    default: return backward_cpu_scalar(c);
  }
}
bool run_forward(const CpuArgs<double>& c) { return forward_cpu_scalar(c); }
bool run_backward(const CpuArgs<double>& c) { return backward_cpu_scalar(c); }

constexpr const char* kOutOfMemory =
    "wkv: the CPU kernel could not allocate its scratch memory (out of memory)";

// The decay w = -exp(time_decay) when the launch carries time_decay, formed here on the calling
// thread (C values): torch's exp would hand even 512 values to MKL's OpenMP threads, a parallel
// region whose barrier waits for a descheduled thread on a busy machine (and hangs a forked
// child). The exp is computed in double and rounded once, so it is the correctly rounded value
// (as torch's, to within its last bit).
template <class S>
Tensor decay(const Launch& a) {
  if (!a.w_is_log) return a.w;
  Tensor w = new_tensor({a.C}, a.w.scalar_type(), a.w);
  const S* td = static_cast<const S*>(a.w.data_ptr());
  S* p = static_cast<S*>(w.data_ptr());
  for (int64_t c = 0; c < a.C; ++c) p[c] = static_cast<S>(-std::exp(static_cast<double>(td[c])));
  return w;
}

template <class S, class I>
void forward_typed(const Launch& a) {
  const Tensor w = decay<S>(a);
  CpuArgs<S, I> c = make_args<S, I>(a, w);
  c.y = ptr_or_null<I>(a.y);
  c.state_out = ptr_or_null<S>(a.state_out);
  WKV_CHECK(run_forward(c), kOutOfMemory);
}

template <class S, class I>
void backward_typed(const Launch& a) {
  const Tensor w = decay<S>(a);
  CpuArgs<S, I> c = make_args<S, I>(a, w);
  c.gy = ptr_or_null<const I>(a.gy);
  c.gstate_out = ptr_or_null<const S>(a.gstate_out);
  c.gk = ptr_or_null<I>(a.gk);
  c.gv = ptr_or_null<I>(a.gv);
  // The kernels accumulate per row; a (C,) gradient is that, summed.
  Tensor gw = a.gw, gu = a.gu;
  if (a.sum_rows) {
    gw = new_tensor({a.B, a.C}, a.gw.scalar_type(), a.gw);
    gu = new_tensor({a.B, a.C}, a.gu.scalar_type(), a.gu);
    std::fill_n(static_cast<S*>(gw.data_ptr()), a.B * a.C, S(0));  // (CPU memory: no dispatcher call)
    std::fill_n(static_cast<S*>(gu.data_ptr()), a.B * a.C, S(0));
  }
  c.gw = ptr_or_null<S>(gw);
  c.gu = ptr_or_null<S>(gu);
  c.gstate_in = ptr_or_null<S>(a.gstate_in);
  WKV_CHECK(run_backward(c), kOutOfMemory);
  if (a.sum_rows) {
    Tensor gw_out = a.gw, gu_out = a.gu;
    torch::stable::sum_out(gw_out, gw, std::vector<int64_t>{0});
    torch::stable::sum_out(gu_out, gu, std::vector<int64_t>{0});
  }
}

// Calls fn.template operator()<S, I>() for the math type S and sequence type I of this launch.
template <class Fn>
void dispatch_types(const Launch& a, Fn fn) {
  switch (a.k.scalar_type()) {
    case ScalarType::Double: return fn.template operator()<double, double>();
    case ScalarType::BFloat16: return fn.template operator()<float, Bf16>();
    case ScalarType::Half: return fn.template operator()<float, Half16>();
    default: return fn.template operator()<float, float>();
  }
}

}  // namespace

void forward_cpu(const Launch& a) {
  if (current_isa() == Isa::CudaEmulation) return forward_emulated(a);
  dispatch_types(a, [&]<class S, class I>() { forward_typed<S, I>(a); });
}

void backward_cpu(const Launch& a) {
  if (current_isa() == Isa::CudaEmulation) return backward_emulated(a);
  dispatch_types(a, [&]<class S, class I>() { backward_typed<S, I>(a); });
}

}  // namespace wkv
