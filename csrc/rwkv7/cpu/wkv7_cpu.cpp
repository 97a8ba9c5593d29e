// RWKV-7 CPU launcher: picks the kernel for this processor (AVX-512F, else AVX2+FMA+F16C, else
// scalar; float64 always scalar) and hands it raw pointers; "cuda_emulation" runs the CUDA
// kernels' bodies instead (wkv7_emulate.cpp). 16-bit sequences are widened as they are loaded.
#include <torch/csrc/stable/ops.h>

#include "common/cpu_isa.h"
#include "rwkv7/wkv7_launch.h"
#include "wkv7_cpu_args.h"

namespace wkv::v7 {
namespace {

template <class S, class I>
CpuArgs<S, I> make_args(const Launch& a) {
  CpuArgs<S, I> c;
  c.B = a.B;
  c.T = a.T;
  c.H = a.H;
  c.N = a.N;
  c.nthreads = static_cast<int>(torch::stable::get_num_threads());
  c.r = ptr_or_null<const I>(a.r);
  c.k = ptr_or_null<const I>(a.k);
  c.v = ptr_or_null<const I>(a.v);
  c.a = ptr_or_null<const I>(a.a);
  c.b = ptr_or_null<const I>(a.b);
  c.w = ptr_or_null<const I>(a.w);
  c.state_in = ptr_or_null<const S>(a.state_in);
  c.state_out = ptr_or_null<S>(a.state_out);
  c.checkpoints = ptr_or_null<S>(a.checkpoints);
  c.y = ptr_or_null<I>(a.y);
  c.gy = ptr_or_null<const I>(a.gy);
  c.gstate_out = ptr_or_null<const S>(a.gstate_out);
  c.gr = ptr_or_null<I>(a.gr);
  c.gw = ptr_or_null<I>(a.gw);
  c.gk = ptr_or_null<I>(a.gk);
  c.gv = ptr_or_null<I>(a.gv);
  c.ga = ptr_or_null<I>(a.ga);
  c.gb = ptr_or_null<I>(a.gb);
  c.gstate_in = ptr_or_null<S>(a.gstate_in);
  return c;
}

template <class I>
bool run(const CpuArgs<float, I>& c, bool forward) {
  switch (current_isa()) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: return forward ? forward_cpu_avx512(c) : backward_cpu_avx512(c);
    case Isa::Avx2: return forward ? forward_cpu_avx2(c) : backward_cpu_avx2(c);
#endif
    default: return forward ? forward_cpu_scalar(c) : backward_cpu_scalar(c);
  }
}
bool run(const CpuArgs<double>& c, bool forward) {
  return forward ? forward_cpu_scalar(c) : backward_cpu_scalar(c);
}

void launch(const Launch& a, bool forward) {
  bool ok = false;
  switch (a.r.scalar_type()) {
    case ScalarType::Double: ok = run(make_args<double, double>(a), forward); break;
    case ScalarType::BFloat16: ok = run(make_args<float, Bf16>(a), forward); break;
    case ScalarType::Half: ok = run(make_args<float, Half16>(a), forward); break;
    default: ok = run(make_args<float, float>(a), forward); break;
  }
  WKV_CHECK(ok, "wkv7: the CPU kernel could not allocate its scratch memory (out of memory)");
}

}  // namespace

void forward_cpu(const Launch& a) {
  if (current_isa() == Isa::CudaEmulation) return forward_emulated(a);
  launch(a, true);
}

void backward_cpu(const Launch& a) {
  if (current_isa() == Isa::CudaEmulation) return backward_emulated(a);
  launch(a, false);
}

}  // namespace wkv::v7
