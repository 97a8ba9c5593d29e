// The CUDA kernels on the CPU: every pass of csrc/rwkv4/wkv_chunked.h run over its whole grid, pass
// after pass, through the same driver as the GPU (csrc/rwkv4/wkv_cuda_driver.h), planned as for an
// H100/H200. Selected with rwkv_wkv.cpu_isa("cuda_emulation"); the test suite runs every CPU
// test this way too, so chunk boundaries and indexing are checked on machines without a GPU.
// Only launch configuration and memory-system effects are left to a real GPU run. (Host code
// uses the accurate exp and division; the GPU uses __expf and __fdividef, see csrc/rwkv4/wkv.h.)
#include <torch/csrc/stable/ops.h>

#include "rwkv4/wkv_cuda_driver.h"

namespace wkv {
namespace {

struct EmulatedGpu {
  int64_t sms = kEmulatedSms;
  template <class Body, class TIn, class S>
  void run(int64_t threads, const ScanArgs<TIn, S>& args) {
    // The threads of one pass are independent by design, so they may run in any order.
    torch::stable::parallel_for(0, threads, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) Body::run(i, args);
    });
  }
};

}  // namespace

void forward_emulated(const Launch& a) {
  EmulatedGpu gpu;
  scan_forward(a, gpu);
}

void backward_emulated(const Launch& a) {
  EmulatedGpu gpu;
  scan_backward(a, gpu);
}

}  // namespace wkv
