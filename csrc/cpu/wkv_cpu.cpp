// CPU launcher: picks the kernel for this processor and hands it raw pointers.
//
// float32 math runs the widest SIMD kernel the processor supports (AVX-512F, else AVX2+FMA,
// else scalar), chosen at run time so the same build runs on any x86-64 (and elsewhere, where
// only the scalar kernel is built). float64 runs the scalar kernel. bfloat16/float16 inputs are
// converted to float32 once, computed, and the results converted back.
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <atomic>

#include "../wkv_launch.h"
#include "wkv_cpu_args.h"

namespace wkv {
namespace {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };

Isa best_isa() {
#if defined(WKV_HAVE_X86_KERNELS)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return Isa::Avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::Avx2;
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
    default: return "scalar";
  }
}

template <class T>
CpuArgs<T> make_args(const Launch& a, const at::Tensor& k, const at::Tensor& v) {
  CpuArgs<T> c;
  c.B = a.B;
  c.T = a.T;
  c.C = a.C;
  c.nthreads = at::get_num_threads();
  c.w = a.w.data_ptr<T>();
  c.u = a.u.data_ptr<T>();
  c.k = k.data_ptr<T>();
  c.v = v.data_ptr<T>();
  c.state_in = a.state_in.defined() ? a.state_in.data_ptr<T>() : nullptr;
  return c;
}

// float32 or float64 view of a (B, T, C) tensor: itself, or a converted copy for 16-bit types.
at::Tensor as_math(const at::Tensor& x, at::ScalarType math) {
  return x.scalar_type() == math ? x : x.to(math);
}
at::Tensor out_buffer(const at::Tensor& out, at::ScalarType math) {
  return out.scalar_type() == math ? out : at::empty(out.sizes(), out.options().dtype(math));
}

void run_forward(const CpuArgs<float>& c) {
  switch (static_cast<Isa>(isa_setting().load())) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: return forward_cpu_avx512(c);
    case Isa::Avx2: return forward_cpu_avx2(c);
#endif
    default: return forward_cpu_scalar(c);
  }
}
void run_backward(const CpuArgs<float>& c) {
  switch (static_cast<Isa>(isa_setting().load())) {
#if defined(WKV_HAVE_X86_KERNELS)
    case Isa::Avx512: return backward_cpu_avx512(c);
    case Isa::Avx2: return backward_cpu_avx2(c);
#endif
    default: return backward_cpu_scalar(c);
  }
}
void run_forward(const CpuArgs<double>& c) { forward_cpu_scalar(c); }
void run_backward(const CpuArgs<double>& c) { backward_cpu_scalar(c); }

template <class T>
void forward_typed(const Launch& a) {
  const auto math = a.w.scalar_type();
  const at::Tensor k = as_math(a.k, math), v = as_math(a.v, math);
  at::Tensor y = out_buffer(a.y, math);
  CpuArgs<T> c = make_args<T>(a, k, v);
  c.y = y.data_ptr<T>();
  c.state_out = a.state_out.defined() ? a.state_out.data_ptr<T>() : nullptr;
  run_forward(c);
  if (!y.is_same(a.y)) a.y.copy_(y);
}

template <class T>
void backward_typed(const Launch& a) {
  const auto math = a.w.scalar_type();
  const at::Tensor k = as_math(a.k, math), v = as_math(a.v, math), gy = as_math(a.gy, math);
  at::Tensor gk = out_buffer(a.gk, math), gv = out_buffer(a.gv, math);
  CpuArgs<T> c = make_args<T>(a, k, v);
  c.gy = gy.data_ptr<T>();
  c.gstate_out = a.gstate_out.defined() ? a.gstate_out.data_ptr<T>() : nullptr;
  c.gk = gk.data_ptr<T>();
  c.gv = gv.data_ptr<T>();
  c.gw = a.gw.data_ptr<T>();
  c.gu = a.gu.data_ptr<T>();
  c.gstate_in = a.gstate_in.defined() ? a.gstate_in.data_ptr<T>() : nullptr;
  run_backward(c);
  if (!gk.is_same(a.gk)) a.gk.copy_(gk);
  if (!gv.is_same(a.gv)) a.gv.copy_(gv);
}

}  // namespace

void forward_cpu(const Launch& a) {
  if (a.w.scalar_type() == at::kDouble) return forward_typed<double>(a);
  forward_typed<float>(a);
}

void backward_cpu(const Launch& a) {
  if (a.w.scalar_type() == at::kDouble) return backward_typed<double>(a);
  backward_typed<float>(a);
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
  } else {
    TORCH_CHECK_VALUE(false, "isa must be one of 'auto', 'avx512', 'avx2', 'scalar'; got '", name,
                      "'");
  }
  TORCH_CHECK(static_cast<int>(want) <= static_cast<int>(best), "isa '", name,
              "' is not supported by this processor/build (best available: '", isa_name(best),
              "')");
  isa_setting().store(static_cast<int>(want));
  return isa_name(want);
}

}  // namespace wkv
