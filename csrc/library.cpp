// The wkv operator library: what every generation's ops share. It defines the torch.ops.wkv
// namespace (each generation adds its ops as a fragment: csrc/rwkv4/wkv_ops.cpp) with the
// library-wide queries, build_info() and cpu_isa(set).
#include <torch/csrc/stable/library.h>

#include <optional>
#include <string>

#include "common/check.h"
#include "common/cpu_isa.h"

namespace wkv {
namespace {

std::string build_info() {
  std::string s;
#ifdef WKV_WITH_CUDA
  s += "cuda=1;";
#else
  s += "cuda=0;";
#endif
#ifdef _OPENMP
  s += "openmp=1;";
#else
  s += "openmp=0;";
#endif
  s += "torch=" WKV_TORCH_VERSION ";";
  // The oldest torch this build loads under: the stable ABI version it was compiled for.
  s += message("abi=stable;abi_target=", (TORCH_TARGET_VERSION >> 56) & 0xff, ".",
               (TORCH_TARGET_VERSION >> 48) & 0xff, ";");
#ifdef WKV_HAVE_X86_KERNELS
  s += "cpu_kernels=avx512,avx2,scalar;";
#else
  s += "cpu_kernels=scalar;";
#endif
#ifdef WKV_CUDA_ARCHS
  s += "cuda_archs=" WKV_CUDA_ARCHS ";";
#endif
#ifdef WKV_CUDA_VERSION
  s += "cuda_version=" WKV_CUDA_VERSION ";";
#endif
  s += "cpu_isa=" + cpu_isa();
  return s;
}

std::string cpu_isa_op(const std::optional<std::string>& set) {
  return set.has_value() ? set_cpu_isa(*set) : cpu_isa();
}

}  // namespace

STABLE_TORCH_LIBRARY(wkv, m) {
  // Tensor-free queries and settings (CompositeExplicitAutograd: no tensor to dispatch on).
  m.def("build_info() -> str");
  m.def("cpu_isa(str? set=None) -> str");
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CompositeExplicitAutograd, m) {
  m.impl("build_info", TORCH_BOX(&build_info));
  m.impl("cpu_isa", TORCH_BOX(&cpu_isa_op));
}

}  // namespace wkv
