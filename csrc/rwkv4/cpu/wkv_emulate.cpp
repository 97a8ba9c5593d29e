// The CUDA kernels on the CPU: every pass of csrc/rwkv4/wkv_chunked.h run over its whole grid, pass
// after pass, through the same driver as the GPU (csrc/rwkv4/wkv_cuda_driver.h), planned as for an
// H100/H200. Selected with rwkv_wkv.cpu_isa("cuda_emulation"); the test suite runs every CPU
// test this way too, so chunk boundaries and indexing are checked on machines without a GPU.
// Only launch configuration and memory-system effects are left to a real GPU run. (Host code
// uses the accurate exp and division; the GPU uses __expf and __fdividef, see csrc/rwkv4/wkv.h.)
#include <torch/csrc/stable/ops.h>

#include <algorithm>

#include "common/parallel.h"
#include "rwkv4/wkv_cuda_driver.h"

namespace wkv {
namespace {

struct EmulatedGpu {
  int64_t sms = kEmulatedSms;
  template <class Body, class TIn, class S>
  void run(int64_t threads, const ScanArgs<TIn, S>& args) {
    // The threads of one pass are independent by design, so they may run in any order.
    const int64_t per_chunk = 16, chunks = (threads + per_chunk - 1) / per_chunk;
    parallel::for_each_chunk(chunks, static_cast<int>(torch::stable::get_num_threads()), [&](int64_t c, int) {
      const int64_t end = std::min(threads, (c + 1) * per_chunk);
      for (int64_t i = c * per_chunk; i < end; ++i) Body::run(i, args);
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
