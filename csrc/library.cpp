// The wkv operator library: what every generation's ops share. It defines the torch.ops.wkv
// namespace (each generation adds its ops as a fragment: csrc/rwkv4/wkv_ops.cpp) with the
// library-wide queries, build_info() and cpu_isa(set).
#include <torch/csrc/stable/library.h>

#include <optional>
#include <string>

#include "common/check.h"
#include "common/cpu_isa.h"
#include "common/parallel.h"

namespace wkv {
namespace {

std::string build_info() {
  std::string s;
#ifdef WKV_WITH_CUDA
  s += "cuda=1;";
#else
  s += "cuda=0;";
#endif
  // the CPU kernels' threads: our own pool (common/parallel.h), not OpenMP's runtime
  s += "openmp=0;threads=pool;";
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

// The CPU kernels' thread pool (common/parallel.h): its settings (negative: unchanged), then its
// counters and settings as "key=value;...".
std::string parallel_info(int64_t spin_us, int64_t caller_spin_us, int64_t handoff, int64_t spread,
                          int64_t worker_delay_us, bool reset) {
  parallel::configure({spin_us, caller_spin_us, handoff, spread, worker_delay_us, reset});
  return parallel::info();
}

std::string cpu_isa_op(const std::optional<std::string>& set) {
  return set.has_value() ? set_cpu_isa(*set) : cpu_isa();
}

}  // namespace

STABLE_TORCH_LIBRARY(wkv, m) {
  // Tensor-free queries and settings (CompositeExplicitAutograd: no tensor to dispatch on).
  m.def("build_info() -> str");
  m.def("cpu_isa(str? set=None) -> str");
  m.def("parallel_info(int spin_us=-1, int caller_spin_us=-2, int handoff=-1, int spread=-1, "
        "int worker_delay_us=-1, bool reset=False) -> str");
}

STABLE_TORCH_LIBRARY_IMPL(wkv, CompositeExplicitAutograd, m) {
  m.impl("build_info", TORCH_BOX(&build_info));
  m.impl("cpu_isa", TORCH_BOX(&cpu_isa_op));
  m.impl("parallel_info", TORCH_BOX(&parallel_info));
}

}  // namespace wkv
