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
#include <array>
#include <atomic>
#include <vector>

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

// An elementwise aten op through the stable dispatcher (bit-identical to torch.<name> in Python).
Tensor call_unary(const char* name, const Tensor& x) {
  std::array<StableIValue, 1> stack{torch::stable::detail::from(x)};
  STABLE_TORCH_ERROR_CODE_CHECK(torch_call_dispatcher(name, "", stack.data(), TORCH_ABI_VERSION));
  return torch::stable::detail::to<Tensor>(stack[0]);
}

// The decay w = -exp(time_decay) when the launch carries time_decay: torch's own exp, so the
// functional ops and RWKV-LM's (w formed in Python) give the same bits; the negation (exact)
// in place, which saves a dispatcher call.
template <class S>
Tensor decay(const Launch& a) {
  if (!a.w_is_log) return a.w;
  Tensor w = call_unary("aten::exp", a.w);
  S* p = static_cast<S*>(w.data_ptr());
  for (int64_t c = 0; c < a.C; ++c) p[c] = -p[c];
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
    WKV_CHECK_VALUE(false,
                      "isa must be one of 'auto', 'avx512', 'avx2', 'scalar', 'cuda_emulation'; "
                      "got '", name, "'");
  }
  WKV_CHECK(static_cast<int>(want) <= static_cast<int>(best), "isa '", name,
              "' is not supported by this processor/build (best available: '", isa_name(best),
              "')");
  isa_setting().store(static_cast<int>(want));
  return isa_name(want);
}

}  // namespace wkv
