#include "cpu_isa.h"

#include <atomic>

#include "check.h"

namespace wkv {
namespace {

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

}  // namespace

Isa current_isa() { return static_cast<Isa>(isa_setting().load()); }

std::string cpu_isa() { return isa_name(current_isa()); }

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
