// CPU launcher: picks the kernel for this processor and hands it raw pointers.
//
// float32 math runs the widest SIMD kernel the processor supports (AVX-512F, else
// AVX2+FMA+F16C, else scalar), chosen at run time so the same build runs on any x86-64 (and
// elsewhere, where only the scalar kernel is built). float64 runs the scalar kernel.
// bfloat16/float16 sequences are widened to float32 as they are loaded and rounded back as they
// are stored, inside the kernel (no converted copies). "cuda_emulation" instead runs the CUDA
// kernels' bodies over their grids (wkv_emulate.cpp): for tests, never the default.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <atomic>

#include "../wkv_launch.h"
#include "wkv_cpu_args.h"

namespace wkv {
namespace {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, CudaEmulation = 3 };

Isa best_isa() {
#if defined(WKV_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return Isa::Avx2;
  }
#endif
  return Isa::Scalar;
}

std::atomic<int>& isa_setting() {
  static std::atomic<int> isa{static_cast<int>(best_isa())};
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Avx512: return "avx512";
    case Isa::Avx2: return "avx2";
    case Isa::CudaEmulation: return "cuda_emulation";
    default: return "scalar";
  }
}

template <class S, class I>
CpuArgs<S, I> make_args(const Launch& a, const at::Tensor& w) {
  CpuArgs<S, I> c;
  c.B = a.B;
  c.T = a.T;
  c.C = a.C;
  c.nthreads = at::get_num_threads();
  c.w = w.data_ptr<S>();
  c.u = a.u.data_ptr<S>();
  c.k = static_cast<const I*>(a.k.const_data_ptr());
  c.v = static_cast<const I*>(a.v.const_data_ptr());
  c.state_in = a.state_in.defined() ? a.state_in.data_ptr<S>() : nullptr;
  c.checkpoints = a.checkpoints.defined() ? a.checkpoints.data_ptr<S>() : nullptr;
  return c;
}

template <class I>
bool run_forward(const CpuArgs<float, I>& c) {
  switch (static_cast<Isa>(isa_setting().load())) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: return forward_cpu_avx512(c);
    case Isa::Avx2: return forward_cpu_avx2(c);
#endif
    default: return forward_cpu_scalar(c);
  }
}
template <class I>
bool run_backward(const CpuArgs<float, I>& c) {
  switch (static_cast<Isa>(isa_setting().load())) {
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

// The decay w = -exp(time_decay) when the launch carries time_decay.
at::Tensor decay(const Launch& a) { return a.w_is_log ? at::neg(at::exp(a.w)) : a.w; }

template <class S, class I>
void forward_typed(const Launch& a) {
  const at::Tensor w = decay(a);
  CpuArgs<S, I> c = make_args<S, I>(a, w);
  c.y = static_cast<I*>(a.y.data_ptr());
  c.state_out = a.state_out.defined() ? a.state_out.data_ptr<S>() : nullptr;
  TORCH_CHECK(run_forward(c), kOutOfMemory);
}

template <class S, class I>
void backward_typed(const Launch& a) {
  const at::Tensor w = decay(a);
  CpuArgs<S, I> c = make_args<S, I>(a, w);
  c.gy = static_cast<const I*>(a.gy.const_data_ptr());
  c.gstate_out = a.gstate_out.defined() ? a.gstate_out.data_ptr<S>() : nullptr;
  c.gk = static_cast<I*>(a.gk.data_ptr());
  c.gv = static_cast<I*>(a.gv.data_ptr());
  // The kernels accumulate per row; a (C,) gradient is that, summed.
  const at::Tensor gw = a.sum_rows ? at::zeros({a.B, a.C}, a.gw.options()) : a.gw;
  const at::Tensor gu = a.sum_rows ? at::zeros({a.B, a.C}, a.gu.options()) : a.gu;
  c.gw = gw.data_ptr<S>();
  c.gu = gu.data_ptr<S>();
  c.gstate_in = a.gstate_in.defined() ? a.gstate_in.data_ptr<S>() : nullptr;
  TORCH_CHECK(run_backward(c), kOutOfMemory);
  if (a.sum_rows) {
    a.gw.copy_(gw.sum(0));
    a.gu.copy_(gu.sum(0));
  }
}

// Calls fn.template operator()<S, I>() for the math type S and sequence type I of this launch.
template <class Fn>
void dispatch_types(const Launch& a, Fn fn) {
  switch (a.k.scalar_type()) {
    case at::kDouble: return fn.template operator()<double, double>();
    case at::kBFloat16: return fn.template operator()<float, Bf16>();
    case at::kHalf: return fn.template operator()<float, Half16>();
    default: return fn.template operator()<float, float>();
  }
}

}  // namespace

void forward_cpu(const Launch& a) {
  if (static_cast<Isa>(isa_setting().load()) == Isa::CudaEmulation) return forward_emulated(a);
  dispatch_types(a, [&]<class S, class I>() { forward_typed<S, I>(a); });
}

void backward_cpu(const Launch& a) {
  if (static_cast<Isa>(isa_setting().load()) == Isa::CudaEmulation) return backward_emulated(a);
  dispatch_types(a, [&]<class S, class I>() { backward_typed<S, I>(a); });
}

std::string cpu_isa() { return isa_name(static_cast<Isa>(isa_setting().load())); }

std::string set_cpu_isa(const std::string& name) {
  const Isa best = best_isa();
  Isa want;
  if (name == "auto") {
    want = best;
  } else if (name == "avx512") {
    want = Isa::Avx512;
  } else if (name == "avx2") {
    want = Isa::Avx2;
  } else if (name == "scalar") {
    want = Isa::Scalar;
  } else if (name == "cuda_emulation") {
    isa_setting().store(static_cast<int>(Isa::CudaEmulation));
    return isa_name(Isa::CudaEmulation);
  } else {
    TORCH_CHECK_VALUE(false,
                      "isa must be one of 'auto', 'avx512', 'avx2', 'scalar', 'cuda_emulation'; "
                      "got '", name, "'");
  }
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(best), "isa '", name,
              "' is not supported by this processor/build (best available: '", isa_name(best),
              "')");
  isa_setting().store(static_cast<int>(want));
  return isa_name(want);
}

}  // namespace wkv
